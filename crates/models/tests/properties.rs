//! Request decoding and validation over generated inputs: never a panic, and
//! the verdict always matches the documented rule.

use madre_models::{ChatRequest, ControlRequest, MAX_MESSAGE_CHARS, is_blank};
use proptest::prelude::*;
use serde_json::json;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn chat_messages_follow_the_rule(message in "\\PC{0,50}|\\s{0,5}", session in "[A-Za-z0-9 ._:/-]{0,10}") {
        let body = json!({ "message": message, "session_id": session });
        let request: ChatRequest = serde_json::from_value(body).unwrap();
        let valid_message = !is_blank(&message) && message.chars().count() <= MAX_MESSAGE_CHARS;
        let valid_session = !session.is_empty() && session.chars().all(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c));
        prop_assert_eq!(request.validate().is_ok(), valid_message && valid_session);
    }

    #[test]
    fn arbitrary_json_never_panics(text in "\\PC{0,200}") {
        if let Ok(request) = serde_json::from_str::<ChatRequest>(&text) {
            let _ = request.validate();
        }
        if let Ok(request) = serde_json::from_str::<ControlRequest>(&text) {
            let _ = request.validate();
        }
    }

    #[test]
    fn control_words_are_folded_never_trimmed(target in "[a-zA-Z_ -]{0,12}", action in "[a-zA-Z0-9_ -]{0,70}") {
        let request = ControlRequest { target: target.clone(), action: action.clone(), params: None, confirm_token: None };
        let word = |w: &str| !w.is_empty() && w.len() <= 64 && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let checked = request.validate();
        prop_assert_eq!(checked.is_ok(), word(&target) && word(&action));
        if let Ok(command) = checked {
            // Case is folded, so MADRE/Terminate is classified as madre/terminate.
            prop_assert_eq!(command.target.as_str(), target.to_ascii_lowercase());
            prop_assert_eq!(command.action.as_str(), action.to_ascii_lowercase());
        }
    }
}
