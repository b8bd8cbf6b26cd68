//! Decoding and validating every request body never panics, whatever bytes
//! arrive; a request that validates keeps its rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use madre_models::{ChatRequest, ChatV6Request, ConfirmRequest, ControlRequest, TaskRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<ChatRequest>(data) {
        if let Ok(command) = request.validate() {
            assert!(!madre_models::is_blank(command.message.as_str()));
            assert!(command.message.as_str().chars().count() <= madre_models::MAX_MESSAGE_CHARS);
        }
    }
    if let Ok(request) = serde_json::from_slice::<ChatV6Request>(data) {
        let _ = request.validate();
    }
    if let Ok(request) = serde_json::from_slice::<ControlRequest>(data) {
        if let Ok(command) = request.validate() {
            assert!(command.params.is_object());
        }
    }
    if let Ok(request) = serde_json::from_slice::<TaskRequest>(data) {
        if let Ok(command) = request.validate() {
            assert_ne!(command.module, madre_models::Module::Madre);
        }
    }
    let _ = serde_json::from_slice::<ConfirmRequest>(data);
});
