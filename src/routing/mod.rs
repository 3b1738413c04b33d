//! The route table: which destinations an event goes to.
//!
//! Routes are tried in order and the first whose `match` fits wins; `default_route` takes the
//! rest. Ingest resolves an event's routes once, when it accepts it, into concrete
//! [`Target`]s (templates rendered, Kafka key extracted) that are stored with the event, so
//! retries go to exactly the destinations that were chosen, whatever happens to the table
//! (the relay's routing worker does the same for events stored unrouted).
//! (docs/configuration.md, "When routes change", has the whole rule.) [`retry`] holds the
//! relay's retry policy: how long to wait after a failed attempt.

mod destination;
mod glob;
pub mod retry;
mod template;

use crate::config::{BodyMatchConfig, Config, DestinationConfig, Problem};
use crate::delivery::{BrokerKind, Delivery, DestinationState, RetryOverride, Target};
use crate::event::{EventType, SourceName, ValidatedEvent};

use destination::Destination;
use glob::Glob;
pub use retry::RelayPolicy;

/// A destination resolved for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub target: Target,
    pub retry: RetryOverride,
    /// The configured destination (`rabbitmq:orders`, `kafka:t.{type}`): a bounded metric
    /// label.
    pub name: String,
}

impl Delivery {
    /// The delivery record of destinations just resolved: each pending, no attempt yet.
    pub fn of(resolved: Vec<Resolved>) -> Delivery {
        let destinations = resolved
            .into_iter()
            .map(|r| DestinationState { name: r.name, ..DestinationState::new(r.target, r.retry) })
            .collect();
        Delivery { destinations }
    }
}

/// A condition on a body value.
#[derive(Debug)]
enum BodyMatch {
    Equals(String, serde_json::Value),
    OneOf(String, Vec<serde_json::Value>),
    Exists(String, bool),
}

impl BodyMatch {
    fn parse(c: &BodyMatchConfig) -> Result<Self, String> {
        if !c.pointer.starts_with('/') {
            return Err(format!("match.body: {:?} is not a JSON pointer", c.pointer));
        }
        let p = c.pointer.clone();
        match (&c.equals, &c.one_of, c.exists) {
            (Some(v), None, None) => Ok(BodyMatch::Equals(p, v.clone())),
            (None, Some(vs), None) => Ok(BodyMatch::OneOf(p, vs.clone())),
            (None, None, Some(e)) => Ok(BodyMatch::Exists(p, e)),
            _ => Err(format!(
                "match.body {:?}: give exactly one of equals, one_of, exists",
                c.pointer
            )),
        }
    }

    fn holds(&self, body: &serde_json::Value) -> bool {
        match self {
            BodyMatch::Equals(p, v) => body.pointer(p) == Some(v),
            BodyMatch::OneOf(p, vs) => body.pointer(p).is_some_and(|x| vs.contains(x)),
            BodyMatch::Exists(p, e) => body.pointer(p).is_some() == *e,
        }
    }
}

#[derive(Debug)]
struct Route {
    source: Option<Glob>,
    event_type: Option<Glob>,
    body: Vec<BodyMatch>,
    /// Lowercase header name and the glob its value must match.
    headers: Vec<(String, Glob)>,
    to: Vec<Destination>,
    continue_matching: bool,
}

impl Route {
    fn matches(&self, source: &SourceName, ty: &EventType, body: &mut Body<'_>) -> bool {
        self.source.as_ref().is_none_or(|g| g.matches(source.as_str()))
            && self.event_type.as_ref().is_none_or(|g| g.matches(ty.as_str()))
            && self
                .headers
                .iter()
                .all(|(name, glob)| body.headers.iter().any(|(n, v)| n == name && glob.matches(v)))
            && (self.body.is_empty() || {
                let value = body.get();
                self.body.iter().all(|m| m.holds(value))
            })
    }
}

/// What routes look at besides source and type: the body, parsed at most once and only if a
/// route or destination looks inside it, and the event's kept headers.
pub struct Body<'a> {
    raw: &'a [u8],
    parsed: Option<serde_json::Value>,
    headers: &'a [(String, String)],
}

impl<'a> Body<'a> {
    pub fn raw(raw: &'a [u8]) -> Self {
        Self { raw, parsed: None, headers: &[] }
    }

    pub fn parsed(value: serde_json::Value) -> Self {
        Self { raw: &[], parsed: Some(value), headers: &[] }
    }

    /// The request headers kept with the event (lowercase names), for header matches.
    pub fn with_headers(mut self, headers: &'a [(String, String)]) -> Self {
        self.headers = headers;
        self
    }

    fn get(&mut self) -> &serde_json::Value {
        let raw = self.raw;
        self.parsed.get_or_insert_with(|| serde_json::from_slice(raw).unwrap_or_default())
    }
}

/// An immutable snapshot of the routes; the relay and ingest read one snapshot per use.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Lowercase names of the headers some route matches on (computed once, read per request).
    matched_headers: Vec<String>,
    default: Option<Vec<Destination>>,
    dlq_copy: Option<Destination>,
}

impl RouteTable {
    /// Compiles the routes, `default_route` and `dlq.publish_to`; every problem is reported
    /// with its key path.
    pub fn from_config(config: &Config) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut destinations = |at: &str, to: &[DestinationConfig], retry| -> Vec<Destination> {
            let mut parsed = Vec::with_capacity(to.len());
            for (j, d) in to.iter().enumerate() {
                match Destination::with_route(d, retry) {
                    Ok(d) => parsed.push(d),
                    Err(e) => problems.push(Problem::new(format!("{at}.to[{j}]"), e)),
                }
            }
            parsed
        };
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut match_problems = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            let to = destinations(&at, &r.to, (r.max_attempts, r.backoff));
            let mut body = Vec::new();
            for (k, m) in r.matches.body.iter().enumerate() {
                match BodyMatch::parse(m) {
                    Ok(m) => body.push(m),
                    Err(e) => match_problems.push(Problem::new(format!("{at}.match.body[{k}]"), e)),
                }
            }
            let mut headers = Vec::new();
            for (name, value) in &r.matches.headers {
                if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    let message = format!("{name:?} is not a header name");
                    match_problems.push(Problem::new(format!("{at}.match.headers"), message));
                }
                headers.push((name.to_ascii_lowercase(), Glob::new(value)));
            }
            routes.push(Route {
                source: r.matches.source.as_deref().map(Glob::new),
                event_type: r.matches.event_type.as_deref().map(Glob::new),
                body,
                headers,
                to,
                continue_matching: r.continue_matching,
            });
        }
        let default = config
            .default_route
            .as_ref()
            .map(|d| destinations("default_route", &d.to, (d.max_attempts, d.backoff)));
        let dlq_copy = match config.dlq.publish_to.as_ref().map(Destination::parse).transpose() {
            Ok(copy) => copy,
            Err(e) => {
                problems.push(Problem::new("dlq.publish_to", e));
                None
            }
        };
        problems.extend(match_problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut matched_headers: Vec<String> =
            routes.iter().flat_map(|r| r.headers.iter().map(|(n, _)| n.clone())).collect();
        matched_headers.sort_unstable();
        matched_headers.dedup();
        Ok(Self { routes, matched_headers, default, dlq_copy })
    }

    /// Where `dlq.publish_to` sends the copy of a dead-lettered event, if configured.
    pub fn dlq_copy_target(&self, event: &ValidatedEvent) -> Option<Target> {
        let mut body = Body::raw(event.body()).with_headers(event.headers());
        self.dlq_copy.as_ref().map(|d| d.resolve(event, &mut body))
    }

    /// The request headers some route matches on (lowercase): ingest keeps them with the
    /// event, so the relay can match them later.
    pub fn matched_headers(&self) -> &[String] {
        &self.matched_headers
    }

    /// The destinations of every matching route, in order: the first match ends the search
    /// unless it says `continue: true`. The default route only if nothing matched.
    fn destinations(
        &self,
        source: &SourceName,
        ty: &EventType,
        body: &mut Body<'_>,
    ) -> Vec<&Destination> {
        let mut found = Vec::new();
        let mut matched = false;
        for route in &self.routes {
            if route.matches(source, ty, body) {
                matched = true;
                found.extend(route.to.iter());
                if !route.continue_matching {
                    break;
                }
            }
        }
        if !matched {
            found.extend(self.default.iter().flatten());
        }
        found
    }

    /// The delivery record of a new event: one pending state per resolved destination (no
    /// destination when nothing matches).
    pub fn delivery_with(&self, event: &ValidatedEvent, view: &mut Body<'_>) -> Delivery {
        Delivery::of(self.resolve_with(event, view))
    }

    /// The concrete targets of `event` with their retry overrides; empty when nothing
    /// matches.
    pub fn resolve(&self, event: &ValidatedEvent) -> Vec<Resolved> {
        let mut view = Body::raw(event.body()).with_headers(event.headers());
        self.resolve_with(event, &mut view)
    }

    /// [`RouteTable::resolve`] with the body already at hand (ingest has parsed it).
    pub fn resolve_with(&self, event: &ValidatedEvent, view: &mut Body<'_>) -> Vec<Resolved> {
        let destinations = self.destinations(event.source(), event.event_type(), view);
        let mut targets: Vec<Resolved> = Vec::with_capacity(destinations.len());
        for d in destinations {
            let target = d.resolve(event, view);
            // Destinations rendering to the same target are one delivery, not two.
            if !targets.iter().any(|r| r.target == target) {
                targets.push(Resolved { target, retry: d.retry, name: d.name() });
            }
        }
        targets
    }

    /// The brokers some route or the default route sends to (what `/ready` checks).
    pub fn brokers_used(&self) -> Vec<BrokerKind> {
        let all = self.routes.iter().flat_map(|r| r.to.iter()).chain(self.default.iter().flatten());
        let mut used: Vec<BrokerKind> = all.map(Destination::broker).collect();
        used.sort();
        used.dedup();
        used
    }
}

#[cfg(test)]
mod tests;
