//! The `filter.types` patterns: which event types this consumer delivers. `*` stands for any
//! run of characters, so `workflow.*` takes `workflow.task.started`; no pattern takes all.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeFilter {
    patterns: Vec<String>,
}

impl TypeFilter {
    pub fn new(patterns: impl IntoIterator<Item = String>) -> Self {
        Self {
            patterns: patterns.into_iter().collect(),
        }
    }

    pub fn accepts(&self, event_type: &str) -> bool {
        self.patterns.is_empty()
            || self
                .patterns
                .iter()
                .any(|pattern| glob_matches(pattern.as_bytes(), event_type.as_bytes()))
    }
}

/// Matches `*` (any run, also empty) and literal characters, backtracking only to the last
/// star, which keeps it linear for patterns like these.
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            last_star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star, matched)) = last_star {
            p = star + 1;
            t = matched + 1;
            last_star = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(patterns: &[&str]) -> TypeFilter {
        TypeFilter::new(patterns.iter().map(|p| p.to_string()))
    }

    #[test]
    fn without_patterns_every_type_passes() {
        assert!(filter(&[]).accepts("anything.at.all"));
    }

    #[test]
    fn a_trailing_star_takes_every_type_below_the_prefix() {
        let f = filter(&["workflow.*"]);
        assert!(f.accepts("workflow.started"));
        assert!(f.accepts("workflow.task.completed"));
        assert!(!f.accepts("workflows.started"));
        assert!(!f.accepts("audit.workflow.started"));
        assert!(!f.accepts("workflow"));
    }

    #[test]
    fn exact_names_and_inner_stars_match_as_written() {
        let f = filter(&["com.github.push", "workflow.*.failed"]);
        assert!(f.accepts("com.github.push"));
        assert!(!f.accepts("com.github.push.x"));
        assert!(f.accepts("workflow.task.failed"));
        assert!(f.accepts("workflow.a.b.failed"));
        assert!(!f.accepts("workflow.task.failed.retry"));
    }
}
