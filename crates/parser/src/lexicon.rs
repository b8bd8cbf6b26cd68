//! The word lists of SPEC §4, already case- and accent-folded. A phrase is a
//! list of consecutive words; most entries are phrases of one word.

use madre_models::Module;

/// One phrase: consecutive folded words.
pub(crate) type Phrase = &'static [&'static str];

/// An action family and the phrases that select it.
pub(crate) struct Family {
    pub(crate) action: &'static str,
    pub(crate) words: &'static [Phrase],
}

/// Destructive verbs; any of them makes the intent `system`/`delete`.
/// Past participles ("deleted files") are left out on purpose: they describe
/// things rather than ask for destruction.
pub(crate) const DESTRUCTIVE_WORDS: &[Phrase] = &[
    &["delete"],
    &["deletes"],
    &["deleting"],
    &["remove"],
    &["removes"],
    &["removing"],
    &["drop"],
    &["drops"],
    &["dropping"],
    &["destroy"],
    &["destroys"],
    &["destroying"],
    &["kill"],
    &["kills"],
    &["killing"],
    &["terminate"],
    &["terminates"],
    &["terminating"],
    &["reset"],
    &["resets"],
    &["resetting"],
    &["wipe"],
    &["wipes"],
    &["wiping"],
    &["truncate"],
    &["truncates"],
    &["truncating"],
    &["erase"],
    &["erases"],
    &["erasing"],
    &["borrar"],
    &["borra"],
    &["borre"],
    &["borralo"],
    &["borrando"],
    &["eliminar"],
    &["elimina"],
    &["elimine"],
    &["eliminalo"],
    &["eliminando"],
    &["destruir"],
    &["destruye"],
    &["destruya"],
    &["matar"],
    &["mata"],
];

/// Non-destructive action families, in priority order: the first that
/// matches wins ("restart" is checked before "run", so it never comes out as run).
pub(crate) const ACTION_FAMILIES: &[Family] = &[
    Family {
        action: "stop",
        words: &[
            &["stop"],
            &["stops"],
            &["stopping"],
            &["pause"],
            &["halt"],
            &["detener"],
            &["deten"],
            &["detenga"],
            &["parar"],
            &["pausar"],
            &["pausa"],
        ],
    },
    Family {
        action: "restart",
        words: &[
            &["restart"],
            &["restarts"],
            &["restarting"],
            &["reboot"],
            &["rebooting"],
            &["reiniciar"],
            &["reinicia"],
            &["reinicie"],
        ],
    },
    Family {
        action: "suspend",
        words: &[&["suspend"], &["suspends"], &["suspender"], &["suspende"]],
    },
    Family {
        action: "cleanup",
        words: &[
            &["cleanup"],
            &["clean"],
            &["cleans"],
            &["cleaning"],
            &["limpiar"],
            &["limpia"],
            &["limpieza"],
        ],
    },
    Family {
        action: "update",
        words: &[
            &["update"],
            &["updates"],
            &["updating"],
            &["patch"],
            &["upgrade"],
            &["actualizar"],
            &["actualiza"],
        ],
    },
    Family {
        action: "migrate",
        words: &[
            &["migrate"],
            &["migrating"],
            &["migration"],
            &["migrar"],
            &["migra"],
        ],
    },
    Family {
        action: "restore",
        words: &[&["restore"], &["restoring"], &["restaurar"], &["restaura"]],
    },
    Family {
        action: "run",
        words: &[
            &["run"],
            &["runs"],
            &["running"],
            &["execute"],
            &["executing"],
            &["perform"],
            &["start"],
            &["starts"],
            &["launch"],
            &["ejecutar"],
            &["ejecuta"],
            &["lanzar"],
            &["lanza"],
        ],
    },
    Family {
        action: "analyze",
        words: &[
            &["analyze"],
            &["analyse"],
            &["analyzing"],
            &["analysis"],
            &["check"],
            &["checks"],
            &["scan"],
            &["audit"],
            &["inspect"],
            &["analizar"],
            &["analiza"],
            &["auditar"],
            &["audita"],
            &["revisar"],
            &["revisa"],
        ],
    },
    Family {
        action: "status",
        words: &[&["status"], &["health"], &["estado"], &["salud"]],
    },
    Family {
        action: "list",
        words: &[
            &["list"],
            &["show"],
            &["get"],
            &["listar"],
            &["mostrar"],
            &["muestra"],
            &["muestrame"],
        ],
    },
    Family {
        action: "help",
        words: &[&["help"], &["how"], &["ayuda"], &["ayudame"]],
    },
];

/// Words that put an intent in the audio domain.
pub(crate) const AUDIO_WORDS: &[Phrase] = &[
    &["mix"],
    &["mixes"],
    &["mixing"],
    &["master"],
    &["mastering"],
    &["audio"],
    &["reaper"],
    &["daw"],
    &["plugin"],
    &["plugins"],
    &["stem"],
    &["stems"],
    &["render"],
    &["rendering"],
    &["eq"],
    &["compress"],
    &["compressor"],
    &["limiter"],
    &["shub"],
    &["shubniggurath"],
    &["wave"],
    &["track"],
    &["tracks"],
    &["normalize"],
    &["mezcla"],
    &["mezclar"],
    &["masterizar"],
    &["pista"],
    &["pistas"],
];

/// Module names as they may be written, and the module each names.
pub(crate) const TARGETS: &[(&[Phrase], Module)] = &[
    (&[&["madre"]], Module::Madre),
    (&[&["switch"]], Module::Switch),
    (&[&["hermes"]], Module::Hermes),
    (&[&["hormiguero"]], Module::Hormiguero),
    (&[&["manifestator"]], Module::Manifestator),
    (&[&["mcp"]], Module::Mcp),
    (&[&["shub"], &["shubniggurath"]], Module::Shub),
    (&[&["spawner"]], Module::Spawner),
    (
        &[&["tentaculo_link"], &["tentaculo", "link"]],
        Module::TentaculoLink,
    ),
];

/// Wording that asks for parallel execution through Hormiguero.
pub(crate) const PARALLEL: &[Phrase] = &[
    &["in", "parallel"],
    &["parallelize"],
    &["parallelise"],
    &["en", "paralelo"],
    &["paraleliza"],
    &["paralelizar"],
];

/// Wording that asks for a drift audit through Manifestator.
pub(crate) const DRIFT: &[Phrase] = &[&["drift"], &["audit", "changes"], &["auditar", "cambios"]];

/// Wording that asks for a long-running background task through the spawner.
pub(crate) const SPAWN: &[Phrase] = &[
    &["spawn"],
    &["background"],
    &["long", "running"],
    &["longrunning"],
    &["en", "segundo", "plano"],
];
