//! Table-driven corpus for the fallback parser: every action family in English
//! and Spanish, the audio domain, targets, parameters, flags, and the traps
//! that a substring matcher would fall into.

use madre_models::{Dsl, Mode, Module};
use madre_parser::{DESTRUCTIVE_WARNING, parse, select_mode};
use serde_json::json;

/// (text, action, domain)
const CORPUS: &[(&str, &str, &str)] = &[
    // destructive, English
    ("delete all data", "delete", "system"),
    ("destroy the database", "delete", "system"),
    ("remove all files", "delete", "system"),
    ("drop the users table", "delete", "system"),
    ("kill the hermes process", "delete", "system"),
    ("terminate every worker", "delete", "system"),
    ("reset the cluster", "delete", "system"),
    ("wipe the disk", "delete", "system"),
    ("truncate the logs", "delete", "system"),
    ("erase my history", "delete", "system"),
    ("DELETE EVERYTHING NOW!!!", "delete", "system"),
    ("Please, delete: the cache.", "delete", "system"),
    ("run delete_all_data now", "delete", "system"),
    ("don't delete anything", "delete", "system"),
    ("restart and then delete the cache", "delete", "system"),
    ("delete the stems of the mix", "delete", "system"),
    // destructive, Spanish (with and without accents)
    ("borrar todos los datos", "delete", "system"),
    ("Bórralo todo", "delete", "system"),
    ("eliminar la base de datos", "delete", "system"),
    ("elimina los archivos", "delete", "system"),
    ("destruir el servidor", "delete", "system"),
    ("matar el proceso de hermes", "delete", "system"),
    ("ELIMINAR TODO", "delete", "system"),
    // stop
    ("stop the shub", "stop", "audio"),
    ("pause the queue", "stop", "general"),
    ("halt hormiguero", "stop", "general"),
    ("detener el spawner", "stop", "general"),
    ("parar el servicio", "stop", "general"),
    // restart
    ("restart the switch", "restart", "general"),
    ("Restart hermes, then run the tests", "restart", "general"),
    ("reboot mcp", "restart", "general"),
    ("reiniciar el switch", "restart", "general"),
    ("reinicia hermes por favor", "restart", "general"),
    // suspend
    ("suspend shub", "suspend", "audio"),
    ("suspender el hormiguero", "suspend", "general"),
    // cleanup
    ("cleanup the temp folder", "cleanup", "general"),
    ("clean the caches", "cleanup", "general"),
    ("limpiar la caché", "cleanup", "general"),
    // update
    ("update the manifestator", "update", "general"),
    ("patch hermes", "update", "general"),
    ("upgrade all modules", "update", "general"),
    ("actualizar el sistema", "update", "general"),
    // migrate / restore
    ("migrate the database to v2", "migrate", "general"),
    ("migrar los datos", "migrate", "general"),
    ("restore yesterday's backup", "restore", "general"),
    ("restaurar la copia", "restore", "general"),
    // run
    ("run the nightly job", "run", "general"),
    ("execute the report", "run", "general"),
    ("perform a benchmark", "run", "general"),
    ("start the pipeline", "run", "general"),
    ("launch the batch", "run", "general"),
    ("ejecutar el informe", "run", "general"),
    ("lanzar el proceso", "run", "general"),
    // analyze
    ("analyze the logs", "analyze", "general"),
    ("analyse the traffic", "analyze", "general"),
    ("check hermes", "analyze", "general"),
    ("scan the repository", "analyze", "general"),
    ("audit the permissions", "analyze", "general"),
    ("inspect the queue", "analyze", "general"),
    ("analizar los registros", "analyze", "general"),
    ("auditar los permisos", "analyze", "general"),
    // status
    ("status", "status", "general"),
    ("what is the health of switch?", "status", "general"),
    ("estado del sistema", "status", "general"),
    ("¿cómo está la salud de hermes?", "status", "general"),
    // list
    ("list the plans", "list", "general"),
    ("show me the modules", "list", "general"),
    ("get the latest tasks", "list", "general"),
    ("listar las tareas", "list", "general"),
    ("mostrar los planes", "list", "general"),
    // help
    ("help", "help", "general"),
    ("how do I confirm a plan", "help", "general"),
    ("ayuda", "help", "general"),
    // chat and traps
    ("hello there", "chat", "general"),
    ("hola, ¿qué tal?", "chat", "general"),
    ("improve my skill", "chat", "general"),
    ("open the address book", "chat", "general"),
    ("undo", "chat", "general"),
    ("the undeleted records", "chat", "general"),
    ("a skillful rerun of the playbook", "chat", "general"),
    ("restarting", "restart", "general"),
    ("", "chat", "general"),
    ("   \t\n ", "chat", "general"),
    ("?!...,,;;", "chat", "general"),
    ("🔥🚀🎉", "chat", "general"),
    ("こんにちは世界", "chat", "general"),
    ("Привет, как дела?", "chat", "general"),
    ("مرحبا", "chat", "general"),
    // audio
    ("mix these 3 stems", "chat", "audio"),
    ("master the album", "chat", "audio"),
    ("render the track in reaper", "chat", "audio"),
    ("add a limiter and normalize", "chat", "audio"),
    ("mezclar las pistas", "chat", "audio"),
    ("analyze the mix", "analyze", "audio"),
    ("compress the vocals with an eq", "chat", "audio"),
];

fn check(text: &str, action: &str, domain: &str) -> Dsl {
    let dsl = parse(text);
    assert_eq!(
        (dsl.action.as_str(), dsl.domain.as_str()),
        (action, domain),
        "for {text:?}"
    );
    let destructive = action == "delete";
    assert_eq!(
        dsl.warnings.contains(&DESTRUCTIVE_WARNING.to_owned()),
        destructive,
        "for {text:?}"
    );
    if destructive {
        assert!(dsl.confidence >= 0.9, "for {text:?}");
    } else {
        assert!((dsl.confidence - 0.3).abs() < f32::EPSILON, "for {text:?}");
    }
    assert_eq!(dsl.original_text, text);
    assert_eq!(dsl.parameters["original_message"], json!(text));
    dsl
}

#[test]
fn corpus_has_at_least_80_phrases_and_every_one_parses_as_expected() {
    assert!(CORPUS.len() >= 80, "corpus has {} phrases", CORPUS.len());
    for (text, action, domain) in CORPUS {
        check(text, action, domain);
    }
}

#[test]
fn the_originals_expectations_hold() {
    let mix = parse("mix these 3 stems");
    assert_eq!(mix.domain, "audio");
    assert!(mix.confidence < 0.5);
    assert_eq!(mix.parameters["stems"], json!(3));
    for text in [
        "delete all data",
        "destroy the database",
        "remove all files",
    ] {
        let dsl = parse(text);
        assert_eq!(
            (dsl.domain.as_str(), dsl.action.as_str()),
            ("system", "delete")
        );
        assert!(dsl.confidence >= 0.9);
        assert_eq!(dsl.warnings, vec![DESTRUCTIVE_WARNING]);
    }
}

#[test]
fn targets_are_module_names_only_in_order_of_mention() {
    let cases: &[(&str, &[Module])] = &[
        ("delete all data", &[]),
        ("remove all files", &[]),
        ("restart the switch", &[Module::Switch]),
        (
            "ask hermes and then switch",
            &[Module::Hermes, Module::Switch],
        ),
        ("stop tentaculo_link", &[Module::TentaculoLink]),
        ("stop the tentáculo link", &[Module::TentaculoLink]),
        ("render on shubniggurath and shub", &[Module::Shub]),
        (
            "madre, status of mcp, spawner, manifestator, hormiguero",
            &[
                Module::Madre,
                Module::Mcp,
                Module::Spawner,
                Module::Manifestator,
                Module::Hormiguero,
            ],
        ),
        ("switches and hermeses", &[]),
        ("HERMES!!!", &[Module::Hermes]),
    ];
    for (text, targets) in cases {
        assert_eq!(parse(text).targets, targets.to_vec(), "for {text:?}");
    }
}

#[test]
fn parameters_key_values_quotes_and_counted_nouns() {
    let p = madre_parser::parameters_of(
        r#"run job=nightly retries=3 dry=true ratio=0.5 with 2 workers named "alpha beta" and "gamma""#,
    );
    assert_eq!(p["job"], json!("nightly"));
    assert_eq!(p["retries"], json!(3));
    assert_eq!(p["dry"], json!(true));
    assert_eq!(p["ratio"], json!(0.5));
    assert_eq!(p["workers"], json!(2));
    assert_eq!(p["quoted"], json!(["alpha beta", "gamma"]));
    // Nothing spurious when there is nothing to extract.
    assert!(madre_parser::parameters_of("hello there").is_empty());
    // "=value" or "key=" alone are not pairs; an unclosed quote is not a string.
    assert!(madre_parser::parameters_of(r#"=x y= "unclosed"#).is_empty());
    // A number too large for i64 is not a count.
    assert!(madre_parser::parameters_of("99999999999999999999999 stems").is_empty());
}

#[test]
fn parallel_drift_and_spawn_flags() {
    let flag = |text: &str, name: &str| parse(text).flag(name);
    assert!(flag("run the tests in parallel", "parallel"));
    assert!(flag("parallelize the build", "parallel"));
    assert!(flag("ejecuta esto en paralelo", "parallel"));
    assert!(flag("paraleliza las tareas", "parallel"));
    assert!(!flag("a parallel universe", "parallel"));
    assert!(flag("check for drift", "drift"));
    assert!(flag("audit changes in the config", "drift"));
    assert!(flag("auditar cambios", "drift"));
    assert!(!flag("audit the permissions", "drift"));
    assert!(flag("spawn a worker for the render", "spawn"));
    assert!(flag("run it in the background", "spawn"));
    assert!(flag("a long-running import", "spawn"));
    assert!(flag("ejecutar en segundo plano", "spawn"));
    assert!(!flag("run the job", "spawn"));
}

#[test]
fn mode_explicit_wins_then_audio_then_sticky_session_mode() {
    let audio = parse("mix these 3 stems");
    let plain = parse("hello");
    assert_eq!(select_mode(None, &audio, Mode::Madre), Mode::AudioEngineer);
    assert_eq!(
        select_mode(None, &plain, Mode::AudioEngineer),
        Mode::AudioEngineer,
        "sticky"
    );
    assert_eq!(select_mode(None, &plain, Mode::Madre), Mode::Madre);
    assert_eq!(
        select_mode(Some(Mode::Madre), &audio, Mode::AudioEngineer),
        Mode::Madre
    );
    assert_eq!(
        select_mode(Some(Mode::AudioEngineer), &plain, Mode::Madre),
        Mode::AudioEngineer
    );
}

#[test]
fn long_input_of_8000_characters_parses_and_keeps_its_verb() {
    let mut text = "lorem ipsum ".repeat(665);
    text.push_str("restart hermes");
    assert!(text.chars().count() <= 8000);
    let dsl = parse(&text);
    assert_eq!(dsl.action, "restart");
    assert_eq!(dsl.targets, vec![Module::Hermes]);
    let emoji = "🎉".repeat(8000);
    assert_eq!(parse(&emoji).action, "chat");
}

#[test]
fn parsing_is_deterministic() {
    for (text, _, _) in CORPUS {
        assert_eq!(parse(text), parse(text));
    }
}
