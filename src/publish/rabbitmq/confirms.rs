//! Charging RabbitMQ returns to the messages that came back, with many messages in flight on
//! one channel.
//!
//! Every message is published `mandatory`: one that no queue takes comes back as a
//! `basic.return`, which AMQP sends before that message's ack. lapin does not hand returns to
//! the caller apart from confirms: it queues them per channel and attaches the oldest to
//! whichever confirm it completes next, and when the broker acks several messages in one frame
//! it completes them in an order of its own. So the confirm that carries a return is often not
//! the returned message's own, and trusting it would settle a message no queue took as
//! delivered.
//!
//! What does hold: returns are handed out first in, first out, one per completed confirm, and
//! each return arrives before its own message's ack. So the returns still queued never
//! outnumber the returned messages whose confirms are not complete yet, and once every message
//! published on a channel has its confirm, every return has been handed to one of them. The
//! publisher therefore works in *epochs*: the messages published on a channel since it was
//! last quiet. Each confirm's carried return is put in the epoch's set by the identity written
//! in it (exchange, routing key, message id); when the last confirm of the epoch is in, each
//! message is settled by looking itself up in that set, whichever confirm carried it. An epoch
//! takes at most `cap` messages, then is sealed so it ends.
//!
//! An epoch in which a confirm failed or timed out never became quiet: a return may still be
//! queued, so its acks are not trusted (those messages are retried; a duplicate is allowed, a
//! loss is not) and its channel is closed instead of reused.

use std::collections::HashMap;
use std::mem;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lapin::message::BasicReturnMessage;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use tokio::sync::oneshot;

use crate::publish::PublishError;

/// A new channel in confirm mode: every message published on it gets an ack or a nack.
pub async fn open_confirm_channel(conn: &Connection) -> lapin::Result<Channel> {
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// How a message names itself in a return: exchange, routing key, message id.
pub type Identity = (String, String, String);

/// A returned message: who it is, and the broker's reason.
pub type Returned = (Identity, String);

pub fn returned(message: &BasicReturnMessage) -> Returned {
    let delivery = &message.delivery;
    let id = delivery.properties.message_id().as_ref().map(|s| s.to_string());
    let identity =
        (delivery.exchange.to_string(), delivery.routing_key.to_string(), id.unwrap_or_default());
    (identity, format!("{} {}", message.reply_code, message.reply_text))
}

/// What one message's own confirm said.
#[derive(Debug)]
pub enum Confirmed {
    Ack,
    Nack,
    /// No confirm: the publish failed, the channel closed, or the confirm timed out.
    Failed(PublishError),
}

type Verdict = Result<(), PublishError>;

/// The messages of one epoch of one channel.
#[derive(Default)]
pub struct Epoch {
    /// Reserved in this epoch and not recorded yet.
    pending: usize,
    /// Reserved in this epoch in all.
    published: usize,
    /// Takes no more messages; it ends when the pending ones are recorded.
    sealed: bool,
    /// A confirm failed or timed out: the acks of this epoch are not trusted.
    broken: bool,
    /// Every return carried by a confirm of this epoch, by identity, with the broker's reason.
    returned: HashMap<Identity, String>,
    waiting: Vec<(Identity, Confirmed, oneshot::Sender<Verdict>)>,
}

/// An epoch whose last confirm is in: every message's verdict is known.
pub struct Ended {
    broken: bool,
    sealed: bool,
    verdicts: Vec<(oneshot::Sender<Verdict>, Verdict)>,
}

impl Ended {
    /// Hands each message its verdict.
    pub fn deliver(self) {
        for (tx, verdict) in self.verdicts {
            let _ = tx.send(verdict);
        }
    }
}

impl Epoch {
    /// Takes a place for one message; false when the epoch is sealed.
    pub fn reserve(&mut self, cap: usize) -> bool {
        if self.sealed {
            return false;
        }
        self.pending += 1;
        self.published += 1;
        self.sealed = self.published >= cap;
        true
    }

    /// Records one reserved message's confirm and the return that confirm carried (anyone's).
    /// Returns the ended epoch when this was its last pending confirm.
    pub fn record(
        &mut self,
        own: Identity,
        confirmed: Confirmed,
        carried: Option<Returned>,
        tx: oneshot::Sender<Verdict>,
    ) -> Option<Ended> {
        if let Some((identity, reason)) = carried {
            self.returned.insert(identity, reason);
        }
        self.broken |= matches!(confirmed, Confirmed::Failed(_));
        self.waiting.push((own, confirmed, tx));
        self.pending -= 1;
        (self.pending == 0).then(|| self.end())
    }

    /// A reserved message that will never be recorded (its publish was dropped): the epoch
    /// is broken, and ends if it was the last one.
    pub fn abandon(&mut self) -> Option<Ended> {
        self.broken = true;
        self.pending -= 1;
        (self.pending == 0).then(|| self.end())
    }

    fn end(&mut self) -> Ended {
        let broken = self.broken;
        // A sealed epoch's channel goes back to the idle pool and a broken one is closed: the
        // group takes nothing more (a publisher still holding it must not share the channel
        // with its next owner). An open epoch that became quiet starts over on its channel.
        let sealed = self.sealed || broken;
        let returned = mem::take(&mut self.returned);
        let verdicts = mem::take(&mut self.waiting)
            .into_iter()
            .map(|(own, confirmed, tx)| (tx, verdict(&own, confirmed, &returned, broken)))
            .collect();
        *self = Epoch { sealed, ..Epoch::default() };
        Ended { broken, sealed, verdicts }
    }
}

fn verdict(
    own: &Identity,
    confirmed: Confirmed,
    returned: &HashMap<Identity, String>,
    broken: bool,
) -> Verdict {
    let (exchange, routing_key, _) = own;
    if let Some(reason) = returned.get(own) {
        return Err(PublishError::unroutable(format!(
            "unroutable: the broker returned the message ({reason}); no queue is bound for \
             routing key {routing_key:?} on exchange {exchange:?}"
        )));
    }
    match confirmed {
        Confirmed::Failed(error) => Err(error),
        Confirmed::Nack => Err(PublishError::transient("the broker nacked the message")),
        Confirmed::Ack if broken => Err(PublishError::transient(
            "acked, but another confirm on the same channel failed, so a return for this \
             message could be missing; publishing it again",
        )),
        Confirmed::Ack => Ok(()),
    }
}

/// The channels of one connection: idle ones, and per exchange the one taking publishes.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Channel>>,
    open: Mutex<HashMap<String, Arc<Group>>>,
}

/// A channel and its current epoch. (No handle back to its pool: the pool holds the open
/// groups, and a cycle would keep both alive after the connection is gone.)
pub struct Group {
    channel: Channel,
    exchange: String,
    epoch: Mutex<Epoch>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    /// A place for one message to `exchange` in an open epoch, on a new channel if needed.
    pub async fn join(
        self: &Arc<Self>,
        connection: &Connection,
        exchange: &str,
        cap: usize,
    ) -> lapin::Result<Reservation> {
        let current = lock(&self.open).get(exchange).cloned();
        if let Some(group) = current
            && lock(&group.epoch).reserve(cap)
        {
            return Ok(Reservation { pool: Arc::clone(self), group, recorded: false });
        }
        let channel = self.checkout(connection).await?;
        let mut epoch = Epoch::default();
        epoch.reserve(cap);
        let group =
            Arc::new(Group { channel, exchange: exchange.to_owned(), epoch: Mutex::new(epoch) });
        lock(&self.open).insert(exchange.to_owned(), Arc::clone(&group));
        Ok(Reservation { pool: Arc::clone(self), group, recorded: false })
    }

    /// A channel with nothing in flight, for the next epoch that needs one.
    pub fn give_back(&self, channel: Channel) {
        lock(&self.idle).push(channel);
    }

    async fn checkout(&self, connection: &Connection) -> lapin::Result<Channel> {
        loop {
            let Some(channel) = lock(&self.idle).pop() else { break };
            if channel.status().connected() {
                return Ok(channel);
            }
        }
        open_confirm_channel(connection).await
    }

    /// Every channel, idle or taking publishes (for shutdown).
    pub fn drain(&self) -> Vec<Channel> {
        let mut channels = mem::take(&mut *lock(&self.idle));
        channels.extend(lock(&self.open).drain().map(|(_, g)| g.channel.clone()));
        channels
    }

    /// After a sealed epoch ended: the group leaves the open set, and its channel goes back
    /// to idle, or is closed if a confirm failed on it.
    fn retire(&self, group: &Arc<Group>, broken: bool) {
        let mut open = lock(&self.open);
        if open.get(&group.exchange).is_some_and(|g| Arc::ptr_eq(g, group)) {
            open.remove(&group.exchange);
        }
        drop(open);
        if !group.channel.status().connected() {
            return;
        }
        if broken {
            let channel = group.channel.clone();
            tokio::spawn(async move {
                let _ = channel.close(200, "a confirm failed on this channel".into()).await;
            });
        } else {
            self.give_back(group.channel.clone());
        }
    }

    fn is_open(&self, group: &Arc<Group>) -> bool {
        lock(&self.open).get(&group.exchange).is_some_and(|g| Arc::ptr_eq(g, group))
    }
}

/// One message's place in an epoch, from before its publish until its confirm is recorded.
pub struct Reservation {
    pool: Arc<Pool>,
    group: Arc<Group>,
    recorded: bool,
}

impl Reservation {
    pub fn channel(&self) -> &Channel {
        &self.group.channel
    }

    /// Records the confirm; the verdict comes when the epoch ends.
    pub fn record(
        mut self,
        own: Identity,
        confirmed: Confirmed,
        carried: Option<Returned>,
    ) -> oneshot::Receiver<Verdict> {
        let (tx, rx) = oneshot::channel();
        self.recorded = true;
        self.step(|epoch| epoch.record(own, confirmed, carried, tx));
        rx
    }

    /// Applies `step` to the epoch; when that ends it, hands out the verdicts and, unless the
    /// group is still its exchange's open one and quiet, retires it. Both under the epoch's
    /// lock, so no publisher holding an old handle can join a channel that was handed on.
    fn step(&self, step: impl FnOnce(&mut Epoch) -> Option<Ended>) {
        let mut epoch = lock(&self.group.epoch);
        let Some(ended) = step(&mut epoch) else { return };
        if ended.sealed || !self.pool.is_open(&self.group) {
            epoch.sealed = true;
            self.pool.retire(&self.group, ended.broken);
        }
        drop(epoch);
        ended.deliver();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.recorded {
            self.step(Epoch::abandon);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Identity {
        ("ex".into(), "key".into(), format!("m{n}"))
    }

    fn verdicts(epoch: &mut Epoch, records: Vec<(u8, Confirmed, Option<u8>)>) -> Vec<Verdict> {
        let mut receivers = Vec::new();
        let mut ended = None;
        for (n, confirmed, carried) in records {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            let carried = carried.map(|c| (id(c), "312 NO_ROUTE".to_owned()));
            assert!(ended.is_none(), "the epoch ended before its last confirm");
            ended = epoch.record(id(n), confirmed, carried, tx);
        }
        ended.expect("the last confirm ends the epoch").deliver();
        receivers.into_iter().map(|mut rx| rx.try_recv().unwrap()).collect()
    }

    #[test]
    fn a_return_carried_by_another_confirm_is_charged_to_its_own_message() {
        let mut epoch = Epoch::default();
        for _ in 0..3 {
            assert!(epoch.reserve(10));
        }
        // m2 came back, but lapin attached its return to m1's confirm.
        let v = verdicts(
            &mut epoch,
            vec![
                (1, Confirmed::Ack, Some(2)),
                (2, Confirmed::Ack, None),
                (3, Confirmed::Ack, None),
            ],
        );
        assert!(v[0].is_ok(), "m1 was delivered");
        let error = v[1].as_ref().unwrap_err();
        assert!(error.message.contains("NO_ROUTE"), "{error:?}");
        assert!(v[2].is_ok());
        assert!(epoch.returned.is_empty(), "the epoch's returns are cleared when it ends");
    }

    #[test]
    fn no_verdict_before_the_last_confirm_of_the_epoch() {
        let mut epoch = Epoch::default();
        assert!(epoch.reserve(10) && epoch.reserve(10));
        let (tx, mut rx) = oneshot::channel();
        assert!(epoch.record(id(1), Confirmed::Ack, None, tx).is_none());
        assert!(rx.try_recv().is_err(), "m1 waits: m2's confirm may carry m1's return");
        let (tx2, mut rx2) = oneshot::channel();
        let carried = Some((id(1), "312 NO_ROUTE".to_owned()));
        epoch.record(id(2), Confirmed::Ack, carried, tx2).unwrap().deliver();
        assert!(rx.try_recv().unwrap().is_err(), "m1 came back");
        assert!(rx2.try_recv().unwrap().is_ok());
    }

    #[test]
    fn acks_in_an_epoch_with_a_failed_confirm_are_retried_and_the_channel_retired() {
        let mut epoch = Epoch::default();
        assert!(epoch.reserve(10) && epoch.reserve(10));
        let (tx, _rx) = oneshot::channel();
        assert!(epoch.record(id(1), Confirmed::Ack, None, tx).is_none());
        let ended = epoch.abandon().unwrap();
        assert!(ended.broken && ended.sealed);
        let mut v = ended.verdicts.into_iter().map(|(_, v)| v);
        assert!(v.next().unwrap().is_err(), "a return for m1 could still be queued");
        assert!(!epoch.reserve(10), "a broken channel takes nothing more");
    }

    #[test]
    fn an_epoch_is_sealed_at_its_cap_and_its_group_ends_with_it() {
        let mut epoch = Epoch::default();
        assert!(epoch.reserve(2) && epoch.reserve(2));
        assert!(!epoch.reserve(2), "sealed at the cap");
        let v = verdicts(&mut epoch, vec![(1, Confirmed::Nack, None), (2, Confirmed::Ack, None)]);
        assert!(v[0].is_err() && v[1].is_ok());
        assert!(!epoch.reserve(2), "a sealed group's channel went back to the pool");
    }

    #[test]
    fn an_open_epoch_that_became_quiet_starts_over_on_its_channel() {
        let mut epoch = Epoch::default();
        assert!(epoch.reserve(10));
        let v = verdicts(&mut epoch, vec![(1, Confirmed::Ack, None)]);
        assert!(v[0].is_ok());
        assert!(epoch.reserve(10), "the next epoch takes messages");
    }
}
