//! Prints what the fallback parser makes of each argument, as JSON with
//! the risk the default policy gives it: `cargo run -p madre-parser
//! --example parse -- "drain all nodes"`.

fn main() {
    let tables = madre_policy::RiskTables::default();
    for text in std::env::args().skip(1) {
        let dsl = madre_parser::parse(&text);
        let risk = tables.assess(&dsl).risk();
        println!(
            "{risk:?}\t{}\t{}\t{}\t{text}",
            dsl.effect.as_str(),
            dsl.action,
            serde_json::to_string(&dsl.parameters).unwrap_or_default()
        );
    }
}
