//! Topic names and subscription filters, NATS style: dot-separated tokens; in a filter `*`
//! matches one token and `>` (last only) one or more tokens. Pure and bounded.
//!
//! - A topic: 1 to [`MAX_TOKENS`] tokens, at most [`MAX_TOPIC_BYTES`] bytes in all, each token
//!   non-empty printable ASCII without `.`, `*`, `>`, `$` or spaces. Names starting with `$`
//!   are reserved.
//! - A filter: the same, where a token may also be `*`, and the last one `>`.
//!
//! `alerts.>` matches `alerts.disk` and `alerts.disk.full`, not `alerts`; `build.*.done`
//! matches `build.web.done`, not `build.web.x.done`.

/// Most bytes of a topic or filter.
pub const MAX_TOPIC_BYTES: usize = 255;
/// Most tokens of a topic or filter.
pub const MAX_TOKENS: usize = 16;
/// Most subscription filters one node holds (config and event streams together) and
/// advertises.
pub const MAX_SUBSCRIPTIONS: usize = 64;

/// Why a topic or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_TOPIC_BYTES} bytes")]
    TooLong,
    #[error("has more than {MAX_TOKENS} tokens")]
    TooManyTokens,
    #[error("has an empty token (two dots in a row, or a dot at an end)")]
    EmptyToken,
    #[error("token {0:?} has a character that is not allowed (printable ASCII other than . * > $ and spaces)")]
    BadChar(String),
    #[error("uses a wildcard (* or >), which only subscriptions may")]
    Wildcard,
    #[error("has > before its last token")]
    TailNotLast,
    #[error("starts with $, which is reserved")]
    Reserved,
}

fn token_ok(t: &str) -> bool {
    t.bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'$'))
}

fn tokens(s: &str) -> Result<Vec<&str>, TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    let tokens: Vec<&str> = s.split('.').collect();
    if tokens.len() > MAX_TOKENS {
        return Err(TopicError::TooManyTokens);
    }
    if tokens.iter().any(|t| t.is_empty()) {
        return Err(TopicError::EmptyToken);
    }
    Ok(tokens)
}

/// Checks a topic a message is published to.
pub fn check_topic(topic: &str) -> Result<(), TopicError> {
    if topic.starts_with('$') {
        return Err(TopicError::Reserved);
    }
    for t in tokens(topic)? {
        if t == "*" || t == ">" {
            return Err(TopicError::Wildcard);
        }
        if !token_ok(t) {
            return Err(TopicError::BadChar(t.to_string()));
        }
    }
    Ok(())
}

/// Checks a subscription filter.
pub fn check_filter(filter: &str) -> Result<(), TopicError> {
    if filter.starts_with('$') {
        return Err(TopicError::Reserved);
    }
    let tokens = tokens(filter)?;
    let last = tokens.len() - 1;
    for (i, t) in tokens.iter().enumerate() {
        match *t {
            "*" => {}
            ">" if i == last => {}
            ">" => return Err(TopicError::TailNotLast),
            t if token_ok(t) => {}
            t => return Err(TopicError::BadChar(t.to_string())),
        }
    }
    Ok(())
}

/// Whether `filter` (checked) matches `topic` (checked).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('.');
    let mut t = topic.split('.');
    loop {
        match (f.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wildcards_match_as_nats_subjects_do() {
        let cases = [
            ("alerts.>", "alerts.disk", true),
            ("alerts.>", "alerts.disk.full", true),
            ("alerts.>", "alerts", false),
            ("build.*.done", "build.web.done", true),
            ("build.*.done", "build.web.x.done", false),
            ("build.*.done", "build.done", false),
            ("*", "a", true),
            ("*", "a.b", false),
            (">", "a.b.c", true),
            ("a.b", "a.b", true),
            ("a.b", "a.bc", false),
            ("a.b", "a", false),
            ("a", "a.b", false),
            ("*.*", "a.b", true),
            ("a.*.>", "a.b", false),
            ("a.*.>", "a.b.c", true),
        ];
        for (filter, topic, want) in cases {
            check_filter(filter).unwrap();
            check_topic(topic).unwrap();
            assert_eq!(matches(filter, topic), want, "{filter} ~ {topic}");
        }
    }

    #[test]
    fn bad_topics_and_filters_are_refused_with_the_reason() {
        assert_eq!(check_topic(""), Err(TopicError::Empty));
        assert_eq!(check_topic("a..b"), Err(TopicError::EmptyToken));
        assert_eq!(check_topic("a."), Err(TopicError::EmptyToken));
        assert_eq!(check_topic("a.*"), Err(TopicError::Wildcard));
        assert_eq!(check_topic("a.>"), Err(TopicError::Wildcard));
        assert_eq!(check_topic("$sys.x"), Err(TopicError::Reserved));
        assert_eq!(check_topic("a b"), Err(TopicError::BadChar("a b".into())));
        assert_eq!(check_topic("a.b*"), Err(TopicError::BadChar("b*".into())));
        assert_eq!(check_topic(&"a".repeat(256)), Err(TopicError::TooLong));
        assert_eq!(
            check_topic(&["a"; 17].join(".")),
            Err(TopicError::TooManyTokens)
        );
        assert!(check_topic(&["a"; 16].join(".")).is_ok());
        assert!(check_topic("build.web-1.done_ok").is_ok());
        assert_eq!(check_filter("a.>.b"), Err(TopicError::TailNotLast));
        assert_eq!(check_filter("a.b>"), Err(TopicError::BadChar("b>".into())));
        assert!(check_filter("a.*.>").is_ok());
    }

    fn token() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from)
    }

    proptest! {
        /// A filter made of a topic's own tokens, with some replaced by `*` and the tail by
        /// `>`, matches it; and matching agrees with a reference written differently.
        #[test]
        fn matching_agrees_with_a_reference(
            topic in prop::collection::vec(token(), 1..5),
            filter in prop::collection::vec(prop::sample::select(vec!["a", "b", "*"]), 1..5),
            tail in any::<bool>(),
        ) {
            let mut f: Vec<&str> = filter.clone();
            if tail {
                f.push(">");
            }
            let (f, t) = (f.join("."), topic.join("."));
            let reference = {
                let ft: Vec<&str> = f.split('.').collect();
                let tt: Vec<&str> = t.split('.').collect();
                let head = if tail { ft.len() - 1 } else { ft.len() };
                let len_ok = if tail { tt.len() > head } else { tt.len() == head };
                len_ok && ft[..head].iter().zip(&tt).all(|(a, b)| *a == "*" || a == b)
            };
            prop_assert_eq!(matches(&f, &t), reference, "{} ~ {}", f, t);
        }
    }
}
