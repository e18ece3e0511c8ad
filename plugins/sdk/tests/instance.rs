//! What the export macros do with a plugin's instance, without a host:
//! `configure` parses the config into the trait's `Config` (naming a wrong
//! key), builds the instance and keeps it; later calls use it; a call
//! before a successful `configure` is refused.
use ferry_plugin_sdk::__private::{configure, thread_local, with, RefCell};
use ferry_plugin_sdk::serde;
use ferry_plugin_sdk::types::{ErrorKind, StageError};

#[derive(serde::Deserialize)]
#[serde(crate = "ferry_plugin_sdk::serde", deny_unknown_fields)]
struct Config {
    step: u32,
}

struct Counter {
    step: u32,
    total: u32,
}

impl Counter {
    fn new(config: Config) -> Result<Counter, StageError> {
        if config.step == 0 {
            return Err(ferry_plugin_sdk::permanent("invalid [config] step: must not be 0"));
        }
        Ok(Counter { step: config.step, total: 0 })
    }

    fn next(&mut self) -> Result<u32, StageError> {
        self.total += self.step;
        Ok(self.total)
    }
}

thread_local! {
    static INSTANCE: RefCell<Option<Counter>> = const { RefCell::new(None) };
}

#[test]
fn configure_keeps_the_instance_later_calls_use() {
    let e = with(&INSTANCE, Counter::next).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Permanent) && e.message.contains("before a successful configure"), "{e:?}");

    let e = configure(&INSTANCE, r#"{"stpe": 2}"#, Counter::new).unwrap_err();
    assert!(e.message.starts_with("invalid [config]") && e.message.contains("stpe"), "{}", e.message);
    assert!(with(&INSTANCE, Counter::next).is_err(), "no instance after a failed configure");

    configure(&INSTANCE, r#"{"step": 2}"#, Counter::new).unwrap();
    assert_eq!(with(&INSTANCE, Counter::next).unwrap(), 2);
    assert_eq!(with(&INSTANCE, Counter::next).unwrap(), 4, "the same instance, with its state");

    // `new` refusing the config leaves the configured instance alone
    let e = configure(&INSTANCE, r#"{"step": 0}"#, Counter::new).unwrap_err();
    assert!(e.message.contains("step"), "{}", e.message);
    assert_eq!(with(&INSTANCE, Counter::next).unwrap(), 6);
}
