//! W3C trace context (`traceparent`): carried from the webhook request to the sink, or
//! started here when the sender sent none or an invalid one.

/// A fresh sampled `traceparent` with new random trace and span ids.
pub fn new_traceparent() -> String {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace_id}-{}-01", new_span_id())
}

/// The `traceparent` of a child span of `parent`: same trace, same flags, a new span id.
/// `None` when `parent` is not a valid version-00 `traceparent` (the caller starts anew, as
/// the W3C specification asks).
pub fn child_traceparent(parent: &str) -> Option<String> {
    let mut parts = parent.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let all_zero = |s: &str| s.bytes().all(|b| b == b'0');
    let valid = version == "00"
        && parts.next().is_none()
        && is_hex(trace_id, 32)
        && !all_zero(trace_id)
        && is_hex(span_id, 16)
        && !all_zero(span_id)
        && is_hex(flags, 2);
    valid.then(|| format!("00-{trace_id}-{}-{flags}", new_span_id()))
}

fn new_span_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_span() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let child = child_traceparent(parent).unwrap();
        assert!(
            child.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{child}"
        );
        assert!(child.ends_with("-01"));
        assert_ne!(child, parent);
        assert!(child_traceparent(&new_traceparent()).is_some());
    }

    #[test]
    fn invalid_parents_are_not_continued() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(child_traceparent(bad), None, "{bad}");
        }
    }
}
