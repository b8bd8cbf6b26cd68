//! Command lines and SQL statements that change or destroy (SPEC §4 "Safety
//! first"): a chat that reaches Hermes may be run as a command line, so a
//! message holding one is HIGH whatever words surround it.
//!
//! The text is first put in a "shell view": compatibility-decomposed, format
//! characters dropped, letters folded to their Latin skeleton (Cyrillic "м"
//! is "m") and everything lower-cased, but punctuation kept as it is, since
//! `|`, `>` and `-` carry the meaning here. The view is cut into words and
//! operators, and each rule looks at a command name and what follows it.
//! Names that are also English or Spanish words ("kill", "halt", "format",
//! "del") only count with arguments that a sentence would not have (options,
//! paths, signal numbers); names that are only commands ("rm", "mkfs",
//! "pkill") count with any argument when they start a command.

use std::collections::HashMap;
use std::sync::LazyLock;

use unicode_normalization::char::decompose_compatible;

use crate::text::{Class, Classes};

/// At most this many detections are recorded for one message.
const MAX_DETECTIONS: usize = 8;
/// At most this many words after a command name are looked at.
const MAX_ARGS: usize = 32;

/// What a detected command or statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Deletes, overwrites or makes unusable.
    Destroys,
    /// Stops or disables a service or machine.
    Stops,
    /// Restarts a service or machine.
    Restarts,
    /// Changes the system without destroying (permissions, firewall rules,
    /// running downloaded code, rows written).
    Changes,
}

/// A command line or a database statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Shell,
    Sql,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Shell => "shell",
            Kind::Sql => "sql",
        }
    }
}

/// One command line or statement found in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Detection {
    pub(crate) kind: Kind,
    /// Which rule fired, e.g. `delete_files`, `sql_drop`, `pipe_to_shell`.
    pub(crate) rule: &'static str,
    pub(crate) effect: Effect,
    /// The command as read (normalised), for the approver.
    pub(crate) text: String,
}

/// Every command line or statement in `text` that changes or destroys, as
/// written and as a shell would read it once it removed the quoting
/// (`r""m`, `r\m`, `'r'm` are all `rm`).
pub(crate) fn detect(text: &str, classes: &mut Classes) -> Vec<Detection> {
    let mut found = detect_in(text, classes);
    if text.contains(['\\', '\'', '"']) {
        let dequoted = dequote(text, classes);
        for detection in detect_in(&dequoted, classes) {
            if found.len() < MAX_DETECTIONS && !found.contains(&detection) {
                found.push(detection);
            }
        }
    }
    found
}

/// `text` without the quoting a shell removes inside a word: backslashes,
/// and quotes that touch a letter or digit (invisible format characters and
/// lone marks dropped first, so `r"\u{200B}"m` is still `rm`).
fn dequote(text: &str, classes: &mut Classes) -> String {
    let chars: Vec<char> = text
        .chars()
        .filter(|&c| c.is_ascii() || !matches!(classes.of(c), Class::Ignorable | Class::Mark))
        .collect();
    let touches = |i: usize| {
        let near = |j: Option<usize>| {
            j.and_then(|j| chars.get(j))
                .is_some_and(|c| c.is_alphanumeric() || matches!(c, '\'' | '"'))
        };
        near(i.checked_sub(1)) || near(Some(i + 1))
    };
    chars
        .iter()
        .enumerate()
        .filter(|&(i, c)| match c {
            '\\' => false,
            '\'' | '"' => !touches(i),
            _ => true,
        })
        .map(|(_, c)| *c)
        .collect()
}

fn detect_in(text: &str, classes: &mut Classes) -> Vec<Detection> {
    let written = view(text, classes);
    let view = written.to_ascii_lowercase();
    let tokens = tokenize(&view);
    let mut found: Vec<Detection> = Vec::new();
    let add = |found: &mut Vec<Detection>, kind, rule, effect, from: usize, to: usize| {
        if found.len() < MAX_DETECTIONS {
            let detection = Detection {
                kind,
                rule,
                effect,
                text: render(&view, &written, &tokens, from, to),
            };
            if !found.contains(&detection) {
                found.push(detection);
            }
        }
    };
    // Where the first downloader is, so `… | sh` knows at once whether it
    // runs downloaded code.
    let first_download = tokens
        .iter()
        .position(|t| matches!(t, Tok::Word(w) if is_downloader(clean(command_name(w)))));
    for i in 0..tokens.len() {
        if found.len() >= MAX_DETECTIONS {
            break;
        }
        match tokens[i] {
            Tok::Word(word) => {
                let name = clean(command_name(word));
                // Most words name no command: look the arguments up only
                // for those that do.
                if let Some(command) = command(name) {
                    let args = args_after(&tokens, i);
                    let end = i + 1 + args.len();
                    let position = in_command_position(&tokens, i);
                    let at_end = tokens[i + 1..].iter().all(|t| match t {
                        Tok::Word(w) => is_filler(w),
                        Tok::Op(_) => true,
                    });
                    if let Some((rule, effect)) =
                        command_rule(name, command, &args, position, at_end)
                    {
                        add(&mut found, Kind::Shell, rule, effect, i, end.min(i + 10));
                    }
                }
                if let Some((rule, effect, len)) = sql_rule(&tokens, i, name) {
                    add(
                        &mut found,
                        Kind::Sql,
                        rule,
                        effect,
                        i,
                        (i + len).min(tokens.len()),
                    );
                }
            }
            Tok::Op(b'>') => {
                let target = tokens[i + 1..].iter().take(3).find_map(|t| match t {
                    Tok::Word(w) => Some(*w),
                    Tok::Op(_) => None,
                });
                if target.is_some_and(is_sensitive_path) {
                    add(
                        &mut found,
                        Kind::Shell,
                        "redirect_over_system_file",
                        Effect::Destroys,
                        segment_start(&tokens, i),
                        (i + 3).min(tokens.len()),
                    );
                }
            }
            Tok::Op(b'|') => {
                if pipes_into_interpreter(&tokens, i) {
                    let rule = if first_download.is_some_and(|d| d < i) {
                        "remote_code"
                    } else {
                        "pipe_to_shell"
                    };
                    add(
                        &mut found,
                        Kind::Shell,
                        rule,
                        Effect::Changes,
                        segment_start(&tokens, i),
                        (i + 3).min(tokens.len()),
                    );
                }
            }
            Tok::Op(_) => {}
        }
    }
    if let Some(at) = process_substitution(&tokens) {
        add(
            &mut found,
            Kind::Shell,
            "remote_code",
            Effect::Changes,
            segment_start(&tokens, at),
            (at + 3).min(tokens.len()),
        );
    }
    if is_fork_bomb(&view, &tokens) {
        found.push(Detection {
            kind: Kind::Shell,
            rule: "fork_bomb",
            effect: Effect::Stops,
            text: compact(&written).chars().take(80).collect(),
        });
        found.truncate(MAX_DETECTIONS);
    }
    found
}

/// The shell view of a text (see the module documentation), before
/// lower-casing: pure ASCII, so lower-casing keeps every byte offset.
fn view(text: &str, classes: &mut Classes) -> String {
    let mut view = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            view.push(c);
            continue;
        }
        decompose_compatible(c, |d| {
            if d.is_ascii() {
                view.push(d);
                return;
            }
            match classes.of(d) {
                // accents and format characters: dropped, nothing split
                Class::Mark | Class::Ignorable => {}
                // dashes, slashes and the like keep their meaning
                Class::Latin(ascii) | Class::Punct(ascii) => view.push_str(ascii.as_str()),
                Class::Letter(_) | Class::Other => view.push(' '),
            }
        });
    }
    view
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'v> {
    Word(&'v str),
    /// `;` (also for a line break), `|`, `&`, `(`, `)`, `{`, `}`, `<`, `>`, `` ` ``.
    Op(u8),
}

fn tokenize(view: &str) -> Vec<Tok<'_>> {
    let mut tokens = Vec::new();
    let mut start: Option<usize> = None;
    for (i, b) in view.bytes().enumerate() {
        let op = match b {
            b'\n' => Some(b';'),
            b';' | b'|' | b'&' | b'(' | b')' | b'{' | b'}' | b'<' | b'>' | b'`' => Some(b),
            _ => None,
        };
        let split = op.is_some() || b.is_ascii_whitespace() || b == b'"' || b == b'\'';
        if split {
            if let Some(s) = start.take()
                && let Some(word) = view.get(s..i)
            {
                tokens.push(Tok::Word(word));
            }
            if let Some(op) = op {
                tokens.push(Tok::Op(op));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start
        && let Some(word) = view.get(s..)
    {
        tokens.push(Tok::Word(word));
    }
    tokens
}

/// Renders tokens `from..to` back to a command line, in the letter case it
/// was written in (`view` is `written` lower-cased, byte for byte).
fn render(view: &str, written: &str, tokens: &[Tok<'_>], from: usize, to: usize) -> String {
    let mut out = String::new();
    for token in tokens.get(from..to.max(from)).unwrap_or(&[]) {
        if !out.is_empty() {
            out.push(' ');
        }
        match token {
            Tok::Word(w) => {
                let at = (w.as_ptr() as usize).wrapping_sub(view.as_ptr() as usize);
                out.push_str(written.get(at..at + w.len()).unwrap_or(w));
            }
            Tok::Op(op) => out.push(char::from(*op)),
        }
    }
    out.chars().take(200).collect()
}

/// A word without the punctuation a sentence puts around it.
fn clean(word: &str) -> &str {
    word.trim_start_matches(['\\', '[', '*', '$'])
        .trim_end_matches([',', '.', ':', '!', '?', ']', '*'])
}

/// `/usr/bin/rm` → `rm`.
fn command_name(word: &str) -> &str {
    match word.rsplit_once('/') {
        Some((_, name)) if !name.is_empty() && !word.starts_with("//") => name,
        _ => word,
    }
}

/// The words after token `i`, up to the end of its command, without the
/// courtesies and stray punctuation a sentence adds ("reboot please :)").
/// A word ending a clause ("reboot, if you don't mind") ends the command.
fn args_after<'v>(tokens: &[Tok<'v>], i: usize) -> Vec<&'v str> {
    let ends_clause = |w: &str| w.ends_with([',', '.', '!', '?', ':']);
    if matches!(tokens.get(i), Some(Tok::Word(name)) if ends_clause(name)) {
        return Vec::new();
    }
    let mut args = Vec::new();
    for token in tokens[i + 1..].iter().take(MAX_ARGS) {
        let Tok::Word(w) = token else { break };
        if !is_filler(w) {
            args.push(*w);
        }
        if ends_clause(w) {
            break;
        }
    }
    args
}

/// A courtesy word, or punctuation alone.
fn is_filler(word: &str) -> bool {
    let word = clean(word);
    word.is_empty() || COURTESIES.contains(&word)
}

/// Words that put the next word in command position.
/// Politeness and "then" words count too: "please reboot" is the command.
const INTRODUCERS: &[&str] = &[
    "sudo", "doas", "su", "run", "exec", "execute", "eval", "nohup", "xargs", "then", "do", "type",
    "command", "builtin", "time", "nice", "ionice", "env", "ejecuta", "ejecutar", "corre", "lanza",
    "$", "#", "-c", "watch", "-y", "please", "pls", "plz", "kindly", "favor", "porfa", "now",
    "just", "and", "also", "you", "luego", "despues", "y", "ahora",
];

/// Words around a command that are not its arguments.
const COURTESIES: &[&str] = &[
    "please", "pls", "plz", "por", "favor", "porfa", "thanks", "thank", "gracias", "ya", "ahora",
];

fn in_command_position(tokens: &[Tok<'_>], i: usize) -> bool {
    match i.checked_sub(1).and_then(|p| tokens.get(p)) {
        None => true,
        Some(Tok::Op(op)) => !matches!(op, b'>' | b'<'),
        // after an introducer, or a word that ends a clause ("hey, reboot")
        Some(Tok::Word(w)) => {
            INTRODUCERS.contains(&clean(w))
                || INTRODUCERS.contains(w)
                || w.ends_with([',', '.', ':', '!', '?'])
        }
    }
}

/// Index of the first token of the command that holds token `i`.
fn segment_start(tokens: &[Tok<'_>], i: usize) -> usize {
    let mut start = i;
    while start > 0
        && i - start < 8
        && !matches!(tokens[start - 1], Tok::Op(b';' | b'&' | b'`' | b'(' | b')'))
    {
        start -= 1;
    }
    start
}

fn is_option(arg: &str) -> bool {
    arg.len() > 1
        && arg.starts_with('-')
        && arg[1..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
}

fn is_pathlike(arg: &str) -> bool {
    let arg = clean(arg);
    arg.contains('/')
        || arg.contains('\\')
        || arg.starts_with('~')
        || arg.contains('*')
        || arg == "."
        || arg == ".."
        || arg.starts_with('$')
        || (arg.contains('.') && arg.len() > 2 && !arg.ends_with('.'))
}

/// An argument list a sentence would not have: an option or a path; in
/// command position, any argument at all.
fn has_args(args: &[&str], position: bool) -> bool {
    (position && !args.is_empty()) || args.iter().any(|a| is_option(a) || is_pathlike(a))
}

fn has(args: &[&str], wanted: &[&str]) -> bool {
    args.iter()
        .any(|a| wanted.contains(&clean(a)) || wanted.contains(a))
}

/// The first argument that is not an option: git's or docker's subcommand.
fn subcommand<'v>(args: &[&'v str]) -> Option<&'v str> {
    args.iter()
        .map(|a| clean(a))
        .find(|a| !a.starts_with('-') && !a.is_empty())
}

/// Files and devices whose overwriting breaks the machine.
fn is_sensitive_path(path: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "/etc",
        "/boot",
        "/bin",
        "/sbin",
        "/usr",
        "/lib",
        "/lib64",
        "/var/lib",
        "/sys",
        "/proc",
        "/dev/sd",
        "/dev/hd",
        "/dev/vd",
        "/dev/xvd",
        "/dev/nvme",
        "/dev/mmcblk",
        "/dev/disk",
        "/dev/mapper",
        "/dev/mem",
        "/dev/kmem",
        "/root",
        "~/.",
        "$home/.",
        "c:\\windows",
        "/system32",
        "c:/windows",
    ];
    let path = clean(path);
    path == "/" || path == "/*" || path == "~" || PREFIXES.iter().any(|p| path.starts_with(p))
}

const INTERPRETERS: &[&str] = &[
    "sh",
    "bash",
    "zsh",
    "dash",
    "ksh",
    "fish",
    "csh",
    "tcsh",
    "python",
    "python2",
    "python3",
    "perl",
    "ruby",
    "node",
    "php",
    "iex",
    "invoke-expression",
    "pwsh",
    "powershell",
    "source",
];

fn is_downloader(name: &str) -> bool {
    matches!(
        name,
        "curl"
            | "wget"
            | "fetch"
            | "iwr"
            | "irm"
            | "invoke-webrequest"
            | "invoke-restmethod"
            | "downloadstring"
            | "aria2c"
    )
}

/// `… | sh`, `… | sudo bash -s`, `… | python3 -`.
fn pipes_into_interpreter(tokens: &[Tok<'_>], pipe: usize) -> bool {
    tokens[pipe + 1..]
        .iter()
        .take(4)
        .map_while(|t| match t {
            Tok::Word(w) => Some(clean(command_name(w))),
            Tok::Op(_) => None,
        })
        .find(|w| !w.is_empty() && !matches!(*w, "sudo" | "doas" | "env") && !is_option(w))
        .is_some_and(|w| INTERPRETERS.contains(&w))
}

/// `bash <(curl …)`, `sh -c "$(curl …)"`, `iex (iwr …)`: a downloader inside
/// parentheses after an interpreter. Returns the downloader's index.
fn process_substitution(tokens: &[Tok<'_>]) -> Option<usize> {
    let mut interpreter_seen = false;
    for (i, token) in tokens.iter().enumerate() {
        let Tok::Word(w) = token else { continue };
        let name = clean(command_name(w));
        if INTERPRETERS.contains(&name) {
            interpreter_seen = true;
        } else if interpreter_seen
            && is_downloader(name)
            && i > 0
            && tokens[..i]
                .iter()
                .rev()
                .take(3)
                .any(|t| *t == Tok::Op(b'('))
        {
            return Some(i);
        }
    }
    None
}

/// `:(){ :|:& };:` under any name, `%0|%0`, `fork while fork`.
fn is_fork_bomb(view: &str, tokens: &[Tok<'_>]) -> bool {
    let compact = compact(view);
    let perl = tokens
        .windows(3)
        .any(|w| w == [Tok::Word("fork"), Tok::Word("while"), Tok::Word("fork")]);
    if perl || compact.contains("%0|%0") {
        return true;
    }
    let mut rest = compact.as_str();
    while let Some(at) = rest.find("(){") {
        let before = &rest[..at];
        let name_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-')))
            .map_or(0, |p| p + 1);
        let run = &before[name_start..];
        let body = &rest[at + 3..];
        // Spaces are gone, so the name may be glued to the word before it
        // ("please bomb(){…}"): try each ending of the run.
        let calls_itself = run
            .char_indices()
            .rev()
            .take(64)
            .any(|(k, _)| body.contains(&format!("{0}|{0}&", &run[k..])));
        if calls_itself {
            return true;
        }
        rest = body;
    }
    false
}

fn compact(view: &str) -> String {
    view.chars().filter(|c| !c.is_whitespace()).collect()
}

/// What a command name is, for the rules: one table, so the quick lookup
/// and the rules cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Destroys whatever it is given; the rule name says what.
    Destroyer(&'static str),
    /// Also an English or Windows word: needs Windows-style arguments.
    WindowsDelete,
    WindowsFormat,
    Dd,
    Permissions,
    Kill,
    Power,
    Init,
    Service,
    Container,
    Cluster,
    Git,
    Find,
    Firewall,
    Crontab,
    Passwd,
    Pacman,
    Dpkg,
    PackageManager,
    Cloud,
    Truncate,
    Move,
    Copy,
    Rsync,
    Tee,
    Infrastructure,
    Redis,
    Unmount,
    Netcat,
    StopService,
    RestartService,
    WindowsTool,
    Cipher,
    SystemTool,
    Sysctl,
}

const COMMANDS: &[(&str, Command)] = &[
    ("rm", Command::Destroyer("delete_files")),
    ("rmdir", Command::Destroyer("delete_files")),
    ("unlink", Command::Destroyer("delete_files")),
    ("shred", Command::Destroyer("delete_files")),
    ("srm", Command::Destroyer("delete_files")),
    ("sdelete", Command::Destroyer("delete_files")),
    ("remove-item", Command::Destroyer("delete_files")),
    ("clear-content", Command::Destroyer("delete_files")),
    ("mkfs", Command::Destroyer("disk_format")),
    ("wipefs", Command::Destroyer("disk_format")),
    ("blkdiscard", Command::Destroyer("disk_format")),
    ("mkswap", Command::Destroyer("disk_format")),
    ("mke2fs", Command::Destroyer("disk_format")),
    ("mkntfs", Command::Destroyer("disk_format")),
    ("fdisk", Command::Destroyer("disk_format")),
    ("sfdisk", Command::Destroyer("disk_format")),
    ("cfdisk", Command::Destroyer("disk_format")),
    ("gdisk", Command::Destroyer("disk_format")),
    ("sgdisk", Command::Destroyer("disk_format")),
    ("parted", Command::Destroyer("disk_format")),
    ("format-volume", Command::Destroyer("disk_format")),
    ("clear-disk", Command::Destroyer("disk_format")),
    ("remove-partition", Command::Destroyer("disk_format")),
    ("lvremove", Command::Destroyer("disk_format")),
    ("vgremove", Command::Destroyer("disk_format")),
    ("pvremove", Command::Destroyer("disk_format")),
    ("dropdb", Command::Destroyer("database_drop")),
    ("dropuser", Command::Destroyer("database_drop")),
    ("userdel", Command::Destroyer("delete_users")),
    ("deluser", Command::Destroyer("delete_users")),
    ("groupdel", Command::Destroyer("delete_users")),
    ("delgroup", Command::Destroyer("delete_users")),
    ("pkill", Command::Destroyer("kill_processes")),
    ("killall", Command::Destroyer("kill_processes")),
    ("xkill", Command::Destroyer("kill_processes")),
    ("taskkill", Command::Destroyer("kill_processes")),
    ("del", Command::WindowsDelete),
    ("erase", Command::WindowsDelete),
    ("rd", Command::WindowsDelete),
    ("format", Command::WindowsFormat),
    ("dd", Command::Dd),
    ("chmod", Command::Permissions),
    ("chown", Command::Permissions),
    ("chgrp", Command::Permissions),
    ("chattr", Command::Permissions),
    ("setfacl", Command::Permissions),
    ("icacls", Command::Permissions),
    ("takeown", Command::Permissions),
    ("kill", Command::Kill),
    ("shutdown", Command::Power),
    ("poweroff", Command::Power),
    ("halt", Command::Power),
    ("reboot", Command::Power),
    ("init", Command::Init),
    ("telinit", Command::Init),
    ("systemctl", Command::Service),
    ("service", Command::Service),
    ("sc", Command::Service),
    ("net", Command::Service),
    ("rc-service", Command::Service),
    ("launchctl", Command::Service),
    ("docker", Command::Container),
    ("podman", Command::Container),
    ("nerdctl", Command::Container),
    ("docker-compose", Command::Container),
    ("crictl", Command::Container),
    ("kubectl", Command::Cluster),
    ("oc", Command::Cluster),
    ("helm", Command::Cluster),
    ("git", Command::Git),
    ("find", Command::Find),
    ("iptables", Command::Firewall),
    ("ip6tables", Command::Firewall),
    ("ebtables", Command::Firewall),
    ("arptables", Command::Firewall),
    ("nft", Command::Firewall),
    ("ufw", Command::Firewall),
    ("firewall-cmd", Command::Firewall),
    ("crontab", Command::Crontab),
    ("passwd", Command::Passwd),
    ("pacman", Command::Pacman),
    ("dpkg", Command::Dpkg),
    ("apt", Command::PackageManager),
    ("apt-get", Command::PackageManager),
    ("aptitude", Command::PackageManager),
    ("yum", Command::PackageManager),
    ("dnf", Command::PackageManager),
    ("zypper", Command::PackageManager),
    ("snap", Command::PackageManager),
    ("brew", Command::PackageManager),
    ("pip", Command::PackageManager),
    ("pip3", Command::PackageManager),
    ("pipx", Command::PackageManager),
    ("npm", Command::PackageManager),
    ("pnpm", Command::PackageManager),
    ("yarn", Command::PackageManager),
    ("cargo", Command::PackageManager),
    ("gem", Command::PackageManager),
    ("choco", Command::PackageManager),
    ("winget", Command::PackageManager),
    ("flatpak", Command::PackageManager),
    ("port", Command::PackageManager),
    ("apk", Command::PackageManager),
    ("conda", Command::PackageManager),
    ("aws", Command::Cloud),
    ("gcloud", Command::Cloud),
    ("az", Command::Cloud),
    ("doctl", Command::Cloud),
    ("heroku", Command::Cloud),
    ("gsutil", Command::Cloud),
    ("s3cmd", Command::Cloud),
    ("rclone", Command::Cloud),
    ("openstack", Command::Cloud),
    ("hcloud", Command::Cloud),
    ("truncate", Command::Truncate),
    ("mv", Command::Move),
    ("cp", Command::Copy),
    ("install", Command::Copy),
    ("ln", Command::Copy),
    ("scp", Command::Copy),
    ("rsync", Command::Rsync),
    ("tee", Command::Tee),
    ("terraform", Command::Infrastructure),
    ("pulumi", Command::Infrastructure),
    ("tofu", Command::Infrastructure),
    ("cdk", Command::Infrastructure),
    ("redis-cli", Command::Redis),
    ("umount", Command::Unmount),
    ("swapoff", Command::Unmount),
    ("nc", Command::Netcat),
    ("ncat", Command::Netcat),
    ("netcat", Command::Netcat),
    ("stop-computer", Command::StopService),
    ("stop-service", Command::StopService),
    ("stop-process", Command::StopService),
    ("restart-computer", Command::RestartService),
    ("restart-service", Command::RestartService),
    ("vssadmin", Command::WindowsTool),
    ("wmic", Command::WindowsTool),
    ("reg", Command::WindowsTool),
    ("cipher", Command::Cipher),
    ("diskpart", Command::SystemTool),
    ("bcdedit", Command::SystemTool),
    ("sysctl", Command::Sysctl),
];

/// [`COMMANDS`] as a map, built once.
static COMMAND_INDEX: LazyLock<HashMap<&'static str, Command>> =
    LazyLock::new(|| COMMANDS.iter().copied().collect());

/// The command a word names, if any (`mkfs.ext4` is `mkfs`).
fn command(name: &str) -> Option<Command> {
    let base = match name.split_once('.') {
        Some(("mkfs", _)) => "mkfs",
        _ => name,
    };
    COMMAND_INDEX.get(base).copied()
}

/// The rule a command and its arguments fire, if any. `position`: the name
/// starts a command; `at_end`: nothing but courtesies follows it.
fn command_rule(
    name: &str,
    command: Command,
    args: &[&str],
    position: bool,
    at_end: bool,
) -> Option<(&'static str, Effect)> {
    use Effect::{Changes, Destroys, Restarts, Stops};
    let some = has_args(args, position);
    let first = args.first().map(|a| clean(a));
    let sub = subcommand(args);
    let operands = || args.iter().filter(|a| !is_option(a)).map(|a| clean(a));
    let windows_args = || {
        args.iter().any(|a| {
            a.starts_with('/')
                || is_option(a)
                || a.contains('\\')
                || (a.len() == 2 && a.ends_with(':'))
        })
    };
    let hit = match command {
        Command::Destroyer(rule) if some => (rule, Destroys),
        Command::WindowsDelete if windows_args() => ("delete_files", Destroys),
        Command::WindowsFormat if windows_args() => ("disk_format", Destroys),
        Command::Dd if args.iter().any(|a| a.starts_with("of=")) => ("disk_overwrite", Destroys),
        Command::Permissions if some => ("permissions", Changes),
        Command::Kill
            if first.is_some_and(|a| {
                is_option(a)
                    || a.starts_with('%')
                    || args.first().is_some_and(|r| r.starts_with('$'))
                    || (!a.is_empty() && a.chars().all(|c| c.is_ascii_digit()))
            }) =>
        {
            ("kill_processes", Destroys)
        }
        Command::Power
            if ((position || at_end) && args.is_empty())
                || first.is_some_and(|a| {
                    is_option(a)
                        || a == "now"
                        || a.starts_with('+')
                        || (!a.is_empty() && a.chars().all(|c| c.is_ascii_digit() || c == ':'))
                }) =>
        {
            if name == "reboot" || has(args, &["-r", "--reboot"]) {
                ("reboot", Restarts)
            } else {
                ("power_off", Stops)
            }
        }
        Command::Init if first == Some("0") || (position && matches!(first, Some("1" | "s"))) => {
            ("power_off", Stops)
        }
        Command::Init if first == Some("6") => ("reboot", Restarts),
        Command::Service => match sub {
            Some(
                "stop" | "disable" | "mask" | "kill" | "isolate" | "poweroff" | "halt" | "suspend"
                | "hibernate" | "rescue" | "emergency" | "unload" | "bootout",
            ) => ("service_stop", Stops),
            Some(
                "reboot" | "restart" | "kexec" | "try-restart" | "reload-or-restart"
                | "soft-reboot",
            ) => ("service_restart", Restarts),
            Some("delete") => ("service_delete", Destroys),
            _ if name == "service" && has(args, &["stop"]) => ("service_stop", Stops),
            _ if name == "service" && has(args, &["restart"]) => ("service_restart", Restarts),
            _ => return None,
        },
        Command::Container => {
            let subs: Vec<&str> = args.iter().take(4).map(|a| clean(a)).collect();
            if subs
                .iter()
                .any(|s| matches!(*s, "rm" | "rmi" | "prune" | "down" | "kill"))
            {
                ("container_delete", Destroys)
            } else if subs.iter().any(|s| matches!(*s, "stop" | "pause")) {
                ("container_stop", Stops)
            } else if subs.contains(&"restart") {
                ("container_restart", Restarts)
            } else {
                return None;
            }
        }
        Command::Cluster => match sub {
            Some("delete" | "uninstall" | "del") => ("cluster_delete", Destroys),
            Some("replace") if has(args, &["--force"]) => ("cluster_delete", Destroys),
            Some("drain" | "cordon") => ("cluster_stop", Stops),
            Some("scale") if args.iter().any(|a| a.contains("replicas=0")) => {
                ("cluster_stop", Stops)
            }
            Some("rollback") => ("cluster_change", Changes),
            Some("rollout") if has(args, &["restart"]) => ("cluster_restart", Restarts),
            _ => return None,
        },
        Command::Git if git_destroys(sub, args) => ("git_history_rewrite", Destroys),
        Command::Find
            if has(args, &["-delete"])
                || (has(args, &["-exec", "-execdir", "-ok"])
                    && has(args, &["rm", "shred", "unlink"])) =>
        {
            ("delete_files", Destroys)
        }
        Command::Firewall => {
            let flush = [
                "-f",
                "--flush",
                "-x",
                "--delete-chain",
                "-d",
                "--delete",
                "flush",
                "delete",
                "reset",
                "destroy",
            ];
            if has(args, &flush) {
                ("firewall_flush", Destroys)
            } else if has(args, &["disable"]) {
                ("firewall_stop", Stops)
            } else if some {
                ("firewall_change", Changes)
            } else {
                return None;
            }
        }
        Command::Crontab if has(args, &["-r"]) => ("crontab_remove", Destroys),
        Command::Passwd if has(args, &["-d", "-l", "--delete", "--lock"]) => {
            ("accounts_change", Changes)
        }
        Command::Pacman if args.iter().any(|a| a.starts_with("-r")) => ("package_remove", Destroys),
        Command::Dpkg if has(args, &["-r", "-p", "--remove", "--purge"]) => {
            ("package_remove", Destroys)
        }
        Command::PackageManager
            if sub.is_some_and(|s| {
                matches!(
                    s,
                    "remove" | "purge" | "autoremove" | "uninstall" | "erase" | "rm" | "un" | "del"
                )
            }) =>
        {
            ("package_remove", Destroys)
        }
        Command::Cloud
            if args.iter().map(|a| clean(a)).any(|a| {
                matches!(a, "rm" | "rb" | "delete" | "destroy" | "purge" | "remove")
                    || a.starts_with("delete-")
                    || a.starts_with("terminate")
            }) =>
        {
            ("cloud_delete", Destroys)
        }
        Command::Truncate
            if args
                .iter()
                .any(|a| a.starts_with("-s") || a.starts_with("--size")) =>
        {
            ("delete_files", Destroys)
        }
        // moving a system file away, or anything into /dev/null
        Command::Move if operands().any(|a| is_sensitive_path(a) || a == "/dev/null") => {
            ("overwrite_system_file", Destroys)
        }
        // copying over a system file (the first operand is the source)
        Command::Copy if operands().skip(1).any(is_sensitive_path) => {
            ("overwrite_system_file", Destroys)
        }
        Command::Rsync
            if args
                .iter()
                .any(|a| a.starts_with("--delete") || a.starts_with("--remove")) =>
        {
            ("delete_files", Destroys)
        }
        Command::Tee if args.iter().any(|a| is_sensitive_path(a)) => {
            ("overwrite_system_file", Destroys)
        }
        Command::Infrastructure if has(args, &["destroy", "-destroy"]) => {
            ("infrastructure_destroy", Destroys)
        }
        Command::Redis if has(args, &["flushall", "flushdb"]) => ("database_flush", Destroys),
        Command::Unmount if some => ("unmount", Stops),
        Command::Netcat if has(args, &["-e", "-c"]) => ("remote_shell", Changes),
        Command::StopService => ("service_stop", Stops),
        Command::RestartService => ("service_restart", Restarts),
        Command::WindowsTool if has(args, &["delete"]) => ("delete_files", Destroys),
        Command::Cipher if args.iter().any(|a| a.starts_with("/w")) => ("delete_files", Destroys),
        Command::SystemTool if position => ("system_change", Changes),
        Command::Sysctl if has(args, &["-w"]) => ("system_change", Changes),
        _ => return None,
    };
    Some(hit)
}

/// Git subcommands that throw away work or history.
fn git_destroys(sub: Option<&str>, args: &[&str]) -> bool {
    match sub {
        Some("reset") => has(args, &["--hard", "--merge", "--keep"]),
        Some("clean") => args
            .iter()
            .any(|a| is_option(a) && (a.contains('f') || a.contains('x'))),
        Some("push") => {
            has(
                args,
                &["--force", "-f", "--delete", "-d", "--mirror", "--prune"],
            ) || args.iter().any(|a| {
                a.starts_with("--force")
                    || a.starts_with('+')
                    || (a.starts_with(':') && a.len() > 1)
            })
        }
        Some("branch" | "tag") => has(args, &["-d", "--delete", "-df"]),
        Some("checkout") => has(args, &["--", ".", "-f", "--force"]),
        Some("restore") => has(args, &[".", "--worktree", "--staged"]),
        Some("stash") => has(args, &["drop", "clear"]),
        Some("filter-branch" | "filter-repo" | "rm") => true,
        Some("reflog") => has(args, &["expire", "delete"]),
        Some("update-ref") => has(args, &["-d"]),
        Some("gc") => args.iter().any(|a| a.starts_with("--prune")),
        _ => false,
    }
}

/// Objects of a destroying `DROP`.
const SQL_OBJECTS: &[&str] = &[
    "table",
    "tables",
    "database",
    "schema",
    "index",
    "view",
    "user",
    "role",
    "trigger",
    "function",
    "procedure",
    "sequence",
    "column",
    "constraint",
    "collection",
    "keyspace",
    "owned",
    "extension",
    "type",
    "materialized",
    "tablespace",
    "if",
    "partition",
    "policy",
];

/// The SQL (or other database) statement starting at token `i`, if any:
/// its rule, effect and length in tokens.
fn sql_rule(tokens: &[Tok<'_>], i: usize, name: &str) -> Option<(&'static str, Effect, usize)> {
    let word = |k: usize| match tokens.get(k) {
        Some(Tok::Word(w)) => Some(clean(w)),
        _ => None,
    };
    let next = word(i + 1);
    let hit = match name {
        "drop" if next.is_some_and(|n| SQL_OBJECTS.contains(&n)) => {
            ("sql_drop", Effect::Destroys, 4)
        }
        "truncate"
            if next == Some("table")
                || (in_command_position(tokens, i)
                    && next.is_some()
                    && matches!(tokens.get(i + 2), None | Some(Tok::Op(b';')))) =>
        {
            ("sql_truncate", Effect::Destroys, 3)
        }
        "delete" if (i + 1..i + 4).any(|k| word(k) == Some("from")) => {
            ("sql_delete", Effect::Destroys, 5)
        }
        "update"
            if word(i + 2) == Some("set")
                && (i + 3..i + 6).any(|k| word(k).is_some_and(|w| w.contains('='))) =>
        {
            ("sql_update", Effect::Changes, 5)
        }
        "alter"
            if next.is_some_and(|n| {
                matches!(
                    n,
                    "table" | "database" | "user" | "role" | "schema" | "system" | "view" | "index"
                )
            }) =>
        {
            ("sql_alter", Effect::Changes, 4)
        }
        "insert" | "replace" | "upsert" | "merge"
            if next == Some("into")
                && match tokens.get(i + 3) {
                    Some(Tok::Op(b'(')) => true,
                    Some(Tok::Word(w)) => {
                        matches!(clean(w), "values" | "select" | "set" | "default" | "using")
                    }
                    _ => false,
                } =>
        {
            ("sql_insert", Effect::Changes, 4)
        }
        "grant"
            if (i + 1..i + 10).any(|k| word(k) == Some("to"))
                && (i + 1..i + 8).any(|k| word(k) == Some("on")) =>
        {
            ("sql_grant", Effect::Changes, 6)
        }
        "revoke" if (i + 1..i + 10).any(|k| matches!(word(k), Some("from" | "on"))) => {
            ("sql_revoke", Effect::Destroys, 6)
        }
        "flushall" | "flushdb" => ("database_flush", Effect::Destroys, 1),
        _ if name.contains('.')
            && (name.contains("dropdatabase")
                || name.ends_with(".drop")
                || name.ends_with(".deletemany")
                || name.ends_with(".deleteone")
                || name.ends_with(".remove")
                || name.ends_with(".droptable")) =>
        {
            ("document_store_delete", Effect::Destroys, 1)
        }
        _ => return None,
    };
    Some(hit)
}
