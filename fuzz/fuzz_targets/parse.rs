//! The parser never panics, and is deterministic, on any UTF-8 text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let first = madre_parser::parse(text);
        assert_eq!(first, madre_parser::parse(text));
        assert_eq!(first.original_text, text);
    }
});
