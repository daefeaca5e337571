//! How a run names what it writes, so a client can tell this run's writes (and which one) from
//! anything else in the table: `product_name = "ob:<tag>:<round>:<seq>"`, and the customer
//! `ob<tag>` (or `ob<tag>c<index>`, one per client, in the filtered scenario).

/// A run's tag: distinct per run, so rows of an earlier run never count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag(pub u32);

/// The product name that identifies one write.
pub fn product(tag: Tag, round: u32, seq: u32) -> String {
    format!("ob:{}:{round}:{seq}", tag.0)
}

/// `(round, seq)` of a product name written under `tag`.
pub fn parse_product(s: &str, tag: Tag) -> Option<(u32, u32)> {
    let mut parts = s.strip_prefix("ob:")?.split(':');
    if parts.next()?.parse::<u32>().ok()? != tag.0 {
        return None;
    }
    let round = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((round, seq))
}

/// The customer a write is for: one per client when filtered, else one for the run.
pub fn customer(tag: Tag, index: Option<u32>) -> String {
    match index {
        Some(i) => format!("ob{}c{i}", tag.0),
        None => format!("ob{}", tag.0),
    }
}

/// Client `g`'s URL: round-robin over `urls`, with its own customer filter when filtered.
pub fn client_url(urls: &[String], g: u32, filtered: Option<Tag>) -> String {
    let base = &urls[g as usize % urls.len()];
    match filtered {
        // `=` inside the filter's value is percent-encoded; the name itself needs nothing.
        Some(tag) => {
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}filter=customer_name%3Deq.{}", customer(tag, Some(g)))
        }
        None => base.clone(),
    }
}

/// Lowercase hex (the histograms cross the pipe as text).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of [`hex`]'s output.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_names_round_trip_and_other_tags_are_foreign() {
        let p = product(Tag(7), 2, 41);
        assert_eq!(parse_product(&p, Tag(7)), Some((2, 41)));
        assert_eq!(parse_product(&p, Tag(8)), None);
        assert_eq!(parse_product("ob:7:2", Tag(7)), None);
        assert_eq!(parse_product("ob:7:2:1:9", Tag(7)), None);
        assert_eq!(parse_product("Premium Widget", Tag(7)), None);
    }

    #[test]
    fn clients_spread_round_robin_with_their_own_filter() {
        let urls = vec!["ws://a/ws".to_string(), "ws://b/".to_string()];
        assert_eq!(client_url(&urls, 0, None), "ws://a/ws");
        assert_eq!(client_url(&urls, 3, Some(Tag(5))), "ws://b/?filter=customer_name%3Deq.ob5c3");
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("0g"), None);
    }
}
