//! `*` globs for route matches: `order.*` matches `order.created`; `*` alone matches anything.

#[derive(Debug, Clone)]
pub(super) struct Glob(Vec<u8>);

impl Glob {
    pub(super) fn new(pattern: &str) -> Self {
        Self(pattern.as_bytes().to_vec())
    }

    /// Linear-time wildcard match with single-star backtracking.
    pub(super) fn matches(&self, text: &str) -> bool {
        let (p, t) = (&self.0, text.as_bytes());
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ti));
                pi += 1;
            } else if pi < p.len() && p[pi] == t[ti] {
                pi += 1;
                ti += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&b| b == b'*')
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn star_matches_any_run() {
        let cases = [
            ("order.*", "order.created", true),
            ("order.*", "order.", true),
            ("order.*", "orders.created", false),
            ("*", "", true),
            ("*.created", "order.created", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(Glob::new(p).matches(t), want, "{p} vs {t}");
        }
    }
}
