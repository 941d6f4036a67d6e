//! `relay_network_whitelist` matching: which foreign networks a public node relays for.
//!
//! EasyTier's semantics: a list of wildcard patterns (`*` any run of characters, `?` exactly
//! one); a network is admitted if any pattern matches its whole name; an empty list admits none.
//! Used by the foreign-relay admission when a link's hello names another network.

/// Whether `network` matches any of `patterns` (empty: none).
pub fn admits(patterns: &[String], network: &str) -> bool {
    patterns.iter().any(|p| matches(p, network))
}

/// Whether the wildcard `pattern` matches the whole of `text` (`*` and `?`, no escapes).
/// Iterative with one backtrack point, so it is linear-ish and cannot blow the stack on
/// hostile names.
pub fn matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Position after the last `*` and the text position it is currently matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((after, matched)) => {
                    pi = after;
                    ti = matched + 1;
                    star = Some((after, matched + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &[&str]) -> Vec<String> {
        s.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn star_admits_every_network() {
        assert!(admits(&list(&["*"]), "home"));
        assert!(admits(&list(&["*"]), ""));
    }

    #[test]
    fn empty_list_admits_none() {
        assert!(!admits(&[], "home"));
    }

    #[test]
    fn wildcards_match_whole_names() {
        assert!(matches("home", "home"));
        assert!(!matches("home", "homes"));
        assert!(!matches("home", "hom"));
        assert!(matches("office-*", "office-berlin"));
        assert!(matches("office-*", "office-"));
        assert!(!matches("office-*", "branch-office-x"));
        assert!(matches("*-lab", "net-lab"));
        assert!(matches("n?t", "net"));
        assert!(!matches("n?t", "nt"));
        assert!(matches("a*b*c", "a-x-b-y-c"));
        assert!(!matches("a*b*c", "a-x-c-y-b"));
        assert!(matches("**", "anything"));
        assert!(matches("*?", "x"));
        assert!(!matches("*?", ""));
    }

    #[test]
    fn any_pattern_in_the_list_admits() {
        let l = list(&["home", "office-*"]);
        assert!(admits(&l, "home"));
        assert!(admits(&l, "office-1"));
        assert!(!admits(&l, "public"));
    }

    #[test]
    fn hostile_patterns_stay_fast() {
        let name = "a".repeat(64);
        let pattern = "*a".repeat(30) + "b";
        assert!(!matches(&pattern, &name));
    }
}
