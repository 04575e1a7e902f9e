//! Quoting untrusted bytes for messages: tar entry names, manifest and config fields, registry
//! responses and parser errors that echo their input all reach a user's terminal through
//! [`crate::Error`]. Raw, they could carry escape sequences (clear the screen, retitle the
//! window, fake a prompt) or megabytes of garbage; quoted, they are printable ASCII plus
//! letters and digits of other scripts, with everything else escaped and the whole cut short.

use std::fmt::Write as _;

/// How many characters of quoted output a field may take before it is cut.
pub const MAX_QUOTED: usize = 300;

/// `bytes` escaped and cut to about [`MAX_QUOTED`] characters.
///
/// Printable ASCII stays as it is (a backslash doubles), `\n`, `\r` and `\t` become those
/// escapes, other valid UTF-8 stays when it is a letter or digit (names in any script) and
/// becomes `\u{..}` otherwise (controls, bidi overrides, zero-width characters), and invalid
/// UTF-8 becomes `\xNN`. A cut ends in `...(N bytes)` so the reader knows more was there.
pub fn untrusted(bytes: &[u8]) -> String {
    untrusted_max(bytes, MAX_QUOTED)
}

/// [`untrusted`] of a string.
pub fn untrusted_str(s: &str) -> String {
    untrusted(s.as_bytes())
}

/// [`untrusted`] with an explicit limit.
pub fn untrusted_max(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    let cut = |mut out: String| {
        let _ = write!(out, "...({} bytes)", bytes.len());
        out
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if out.len() >= max {
                return cut(out);
            }
            push_char(&mut out, c);
        }
        for b in chunk.invalid() {
            if out.len() >= max {
                return cut(out);
            }
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        ' '..='~' => out.push(c),
        c if !c.is_ascii() && c.is_alphanumeric() => out.push(c),
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing a terminal interprets survives: no C0/C1 control, DEL, bidi or zero-width
    /// character, and no invalid UTF-8.
    fn is_inert(s: &str) -> bool {
        s.chars().all(|c| {
            (' '..='~').contains(&c) || (!c.is_ascii() && c.is_alphanumeric() && !c.is_control())
        })
    }

    #[test]
    fn hostile_bytes_are_escaped() {
        let cases: [(&[u8], &str); 9] = [
            (b"plain name.txt", "plain name.txt"),
            (
                b"\x1b[2J\x1b]0;pwned\x07",
                "\\u{1b}[2J\\u{1b}]0;pwned\\u{7}",
            ),
            (b"a\nb\r\tc\\", "a\\nb\\r\\tc\\\\"),
            (b"\xff\xfe ok \xc3", "\\xff\\xfe ok \\xc3"),
            (
                "caf\u{e9} \u{65e5}\u{672c}".as_bytes(),
                "caf\u{e9} \u{65e5}\u{672c}",
            ),
            // 8-bit CSI, right-to-left override, zero-width joiner, DEL.
            ("\u{9b}31m".as_bytes(), "\\u{9b}31m"),
            ("evil\u{202e}txt.exe".as_bytes(), "evil\\u{202e}txt.exe"),
            ("a\u{200d}b\u{7f}".as_bytes(), "a\\u{200d}b\\u{7f}"),
            (b"", ""),
        ];
        for (input, want) in cases {
            let got = untrusted(input);
            assert_eq!(got, want, "{input:?}");
            assert!(is_inert(&got), "{got:?}");
        }
    }

    #[test]
    fn long_input_is_cut_short() {
        let big = vec![b'A'; 1 << 20];
        let q = untrusted(&big);
        assert!(q.len() < MAX_QUOTED + 40, "{}", q.len());
        assert!(q.ends_with("...(1048576 bytes)"), "{q}");
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
        let q = untrusted(&big);
        assert!(q.len() < MAX_QUOTED + 40, "{}", q.len());
        assert!(q.ends_with("...(100000 bytes)"), "{q}");
        assert!(is_inert(&q));
        // Exactly at the limit: not marked as cut.
        let exact = vec![b'x'; MAX_QUOTED];
        assert_eq!(untrusted(&exact), String::from_utf8(exact).unwrap());
    }

    /// Every byte value, alone and in every position of a pseudo-random stream.
    #[test]
    fn any_bytes_come_out_inert() {
        for b in 0..=255u8 {
            assert!(is_inert(&untrusted(&[b])), "{b}");
        }
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let len = (x % 700) as usize;
            let mut v = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push((x >> 24) as u8);
            }
            let q = untrusted(&v);
            assert!(is_inert(&q), "{q:?}");
            assert!(q.len() < MAX_QUOTED + 40);
        }
    }
}
