//! A daemon's TOML file: its command-line options, one key each.
//!
//! Every long option of the daemon is a key (`silence_ms` or
//! `silence-ms`); a switch takes `true` or `false`, an option given more
//! than once a list. The file is `/etc/ftvm/<daemon>.toml` when it exists,
//! or the one `--config FILE` names; a flag on the command line overrides
//! the file's key (a list too). An unknown key, a value of the wrong kind, or a value the
//! option refuses is an error naming the file, the line and the key.
//!
//! The keys are not a second list to keep in step with the flags: they
//! are read off the daemon's clap definition.

use clap::{ArgAction, CommandFactory, FromArgMatches};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Which daemon, and which of its subcommands the file configures
/// (`agent run`); without one, the file configures the daemon when it
/// runs no subcommand (the arbiter's server, not its client commands).
#[derive(Clone, Copy, Debug)]
pub struct Daemon {
    pub name: &'static str,
    pub subcommand: Option<&'static str>,
}

impl Daemon {
    pub fn default_path(&self) -> PathBuf {
        PathBuf::from(format!("/etc/ftvm/{}.toml", self.name))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error("{0}")]
    File(String),
}

/// Parses the command line together with the daemon's file; exits with a
/// message (status 2) on a bad one, as clap does for bad flags.
pub fn parse<T: CommandFactory + FromArgMatches>(daemon: Daemon) -> T {
    match try_parse(
        daemon,
        std::env::args_os().collect(),
        &daemon.default_path(),
    ) {
        Ok(parsed) => parsed,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(ConfigError::File(message)) => {
            eprintln!("{}: error: {message}", daemon.name);
            std::process::exit(2)
        }
    }
}

/// [`parse`] of `argv`, the file at `default_path` applying when it
/// exists and `--config` names none.
pub fn try_parse<T: CommandFactory + FromArgMatches>(
    daemon: Daemon,
    argv: Vec<OsString>,
    default_path: &Path,
) -> Result<T, ConfigError> {
    let command = with_config_option(T::command(), daemon);
    let configured = match daemon.subcommand {
        Some(sub) => argv.get(1).is_some_and(|a| a == sub),
        None => argv
            .get(1)
            .is_none_or(|a| command.find_subcommand(a).is_none()),
    };
    if !configured {
        let matches = command.try_get_matches_from(argv)?;
        return Ok(T::from_arg_matches(&matches)?);
    }
    let head_len = if daemon.subcommand.is_some() { 2 } else { 1 };
    let (head, rest) = argv.split_at(head_len.min(argv.len()));
    let (path, rest) = take_config_flag(rest)?;
    let path = match path {
        Some(path) => Some(path),
        None => default_path.exists().then(|| default_path.to_path_buf()),
    };
    let mut command = command;
    let target = match daemon.subcommand {
        Some(sub) => command
            .find_subcommand_mut(sub)
            .expect("the daemon has the subcommand it configures"),
        None => &mut command,
    };
    let mut from_file = match &path {
        Some(path) => file_flags(target, path)?,
        None => Vec::new(),
    };
    // A flag on the command line overrides the file's key (a list too).
    from_file.retain(|flag| !on_command_line(&flag.long, &rest));
    let mut full: Vec<OsString> = head.to_vec();
    full.extend(from_file.iter().flat_map(|flag| flag.args.iter().cloned()));
    full.extend(rest.iter().cloned());
    let matches = command
        .try_get_matches_from(full)
        .map_err(|e| blame_the_file(e, &from_file, path.as_deref()))?;
    Ok(T::from_arg_matches(&matches)?)
}

/// `--config FILE` in the help text (it is taken out before clap parses).
fn with_config_option(command: clap::Command, daemon: Daemon) -> clap::Command {
    let config = clap::Arg::new("config")
        .long("config")
        .value_name("FILE")
        .help(format!(
            "TOML file of options, one key per long option (default {}, if it exists)",
            daemon.default_path().display()
        ));
    match daemon.subcommand {
        Some(sub) => command.mut_subcommand(sub, |c| c.arg(config)),
        None => command.arg(config),
    }
}

/// Takes `--config FILE` (or `--config=FILE`) out of the arguments.
fn take_config_flag(args: &[OsString]) -> Result<(Option<PathBuf>, Vec<OsString>), ConfigError> {
    let (mut path, mut rest) = (None, Vec::new());
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--config" {
            let value = args
                .next()
                .ok_or_else(|| ConfigError::File("--config needs a file".into()))?;
            path = Some(PathBuf::from(value));
        } else if let Some(value) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            path = Some(PathBuf::from(value));
        } else {
            rest.push(arg.clone());
        }
    }
    Ok((path, rest))
}

/// The flags one key of the file stands for, and where it is.
struct FileFlag {
    long: String,
    key: String,
    line: usize,
    args: Vec<OsString>,
}

/// Reads `path` and turns each key into its flags, in the file's order.
fn file_flags(command: &clap::Command, path: &Path) -> Result<Vec<FileFlag>, ConfigError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::File(format!("cannot read the configuration {shown}: {e}")))?;
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> = toml::from_str(&text)
        .map_err(|e| ConfigError::File(format!("{shown}: {}", e.to_string().trim_end())))?;
    let line_of = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let mut entries: Vec<_> = table.into_iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    let known: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some_and(|long| long != "config"))
        .filter(|arg| !matches!(arg.get_action(), ArgAction::Help | ArgAction::Version))
        .collect();
    let mut flags = Vec::new();
    for (key, value) in entries {
        let line = line_of(key.span().start);
        let name = key.get_ref();
        let here =
            |what: String| ConfigError::File(format!("{shown}:{line}: key `{name}`: {what}"));
        let long = name.replace('_', "-");
        let Some(arg) = known
            .iter()
            .find(|arg| arg.get_long() == Some(long.as_str()))
        else {
            let mut keys: Vec<String> = known
                .iter()
                .filter(|arg| !arg.is_hide_set())
                .filter_map(|arg| arg.get_long())
                .map(|long| long.replace('-', "_"))
                .collect();
            keys.sort();
            return Err(here(format!(
                "unknown key (the keys are: {})",
                keys.join(", ")
            )));
        };
        let flag = format!("--{long}");
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let many = matches!(arg.get_action(), ArgAction::Append);
        let mut args = Vec::new();
        match value.into_inner() {
            toml::Value::Boolean(on) if switch => {
                if on {
                    args.push(flag.clone().into());
                }
            }
            _ if switch => return Err(here("a switch: true or false".into())),
            toml::Value::Array(items) if many => {
                for item in items {
                    let value = scalar(item).map_err(|what| here(what.into()))?;
                    args.push(format!("{flag}={value}").into());
                }
            }
            toml::Value::Array(_) => return Err(here("takes one value, not a list".into())),
            // One `--flag=value` word, so a value like `-3` is never a flag.
            other => {
                let value = scalar(other).map_err(|what| here(what.into()))?;
                args.push(format!("{flag}={value}").into());
            }
        }
        flags.push(FileFlag {
            long,
            key: name.clone(),
            line,
            args,
        });
    }
    Ok(flags)
}

/// A TOML value as the text of a flag's value.
fn scalar(value: toml::Value) -> Result<String, &'static str> {
    Ok(match value {
        toml::Value::String(text) => text,
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(x) => x.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) | toml::Value::Table(_) => {
            return Err("a list or table where a single value belongs")
        }
    })
}

fn on_command_line(long: &str, args: &[OsString]) -> bool {
    let (flag, with_value) = (format!("--{long}"), format!("--{long}="));
    args.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.starts_with(&with_value))
    })
}

/// A clap error about an option that came from the file names the file's
/// key and line.
fn blame_the_file(error: clap::Error, from_file: &[FileFlag], path: Option<&Path>) -> ConfigError {
    let (Some(path), Some(clap::error::ContextValue::String(arg))) =
        (path, error.get(clap::error::ContextKind::InvalidArg))
    else {
        return ConfigError::Clap(error);
    };
    let long = arg
        .trim_start_matches('-')
        .split([' ', '=', '<'])
        .next()
        .unwrap_or_default();
    match from_file.iter().find(|flag| flag.long == long) {
        Some(flag) => {
            let rendered = error.render().to_string();
            let message = rendered
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            ConfigError::File(format!(
                "{}:{}: key `{}`: {message}",
                path.display(),
                flag.line,
                flag.key
            ))
        }
        None => ConfigError::Clap(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write;

    #[derive(Parser, Debug, PartialEq)]
    struct Args {
        #[arg(long)]
        listen: String,
        #[arg(long, default_value_t = 500)]
        silence_ms: u64,
        #[arg(long)]
        init: bool,
        #[arg(long)]
        fault: Vec<String>,
    }

    const DAEMON: Daemon = Daemon {
        name: "test",
        subcommand: None,
    };

    /// A TOML file in the temporary directory, removed on drop.
    struct TempToml(PathBuf);

    impl Drop for TempToml {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file(text: &str) -> TempToml {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ftvm-config-{}-{n}.toml", std::process::id()));
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("write the test file");
        TempToml(path)
    }

    fn parse(args: &[&str], config: Option<&Path>) -> Result<Args, ConfigError> {
        let mut argv: Vec<OsString> = vec!["test".into()];
        if let Some(config) = config {
            argv.push("--config".into());
            argv.push(config.into());
        }
        argv.extend(args.iter().map(OsString::from));
        try_parse(DAEMON, argv, Path::new("/nonexistent/ftvm.toml"))
    }

    fn file_error(result: Result<Args, ConfigError>) -> String {
        match result {
            Err(ConfigError::File(message)) => message,
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn a_file_alone_gives_every_option() {
        let f = file("listen = \"198.18.0.20:7700\"\nsilence_ms = 900\ninit = true\nfault = [\"a\", \"b\"]\n");
        let args = parse(&[], Some(&f.0)).unwrap();
        assert_eq!(
            args,
            Args {
                listen: "198.18.0.20:7700".into(),
                silence_ms: 900,
                init: true,
                fault: vec!["a".into(), "b".into()],
            }
        );
    }

    #[test]
    fn a_flag_overrides_the_file() {
        let f = file("listen = \"x\"\nsilence-ms = 900\n");
        let args = parse(&["--silence-ms", "700"], Some(&f.0)).unwrap();
        assert_eq!((args.listen.as_str(), args.silence_ms), ("x", 700));
        // A bad value in the file that the command line overrides is moot.
        let f = file("listen = \"x\"\nsilence_ms = \"soon\"\n");
        assert_eq!(
            parse(&["--silence-ms=7"], Some(&f.0)).unwrap().silence_ms,
            7
        );
    }

    #[test]
    fn an_unknown_key_names_the_file_the_line_and_the_key() {
        let f = file("listen = \"x\"\n\nsilense_ms = 900\n");
        let message = file_error(parse(&[], Some(&f.0)));
        let at = format!("{}:3: key `silense_ms`: unknown key", f.0.display());
        assert!(message.starts_with(&at), "{message}");
        assert!(message.contains("silence_ms"), "lists the keys: {message}");
    }

    #[test]
    fn a_bad_value_names_the_file_the_line_and_the_key() {
        let f = file("listen = \"x\"\nsilence_ms = \"soon\"\n");
        let message = file_error(parse(&[], Some(&f.0)));
        assert!(
            message.starts_with(&format!("{}:2: key `silence_ms`: ", f.0.display())),
            "{message}"
        );
        assert!(message.contains("soon"), "{message}");
        for (text, line, what) in [
            ("listen = \"x\"\ninit = 1\n", 2, "a switch"),
            ("listen = [\"x\", \"y\"]\n", 1, "not a list"),
            ("listen = \"x\"\nfault = [[1]]\n", 2, "a list or table"),
        ] {
            let f = file(text);
            let message = file_error(parse(&[], Some(&f.0)));
            assert!(message.contains(&format!(":{line}: key")), "{message}");
            assert!(message.contains(what), "{message}");
        }
        let f = file("listen = \"x\"\nsilence_ms = -3\n");
        let message = file_error(parse(&[], Some(&f.0)));
        assert!(
            message.contains(":2: key `silence_ms`") && message.contains("-3"),
            "{message}"
        );
        let f = file("listen = \"x\"\nsilence_ms = \n");
        let message = file_error(parse(&[], Some(&f.0)));
        assert!(
            message.contains("line 2"),
            "TOML's own error has the line: {message}"
        );
    }

    #[test]
    fn without_a_file_only_flags_count() {
        assert_eq!(parse(&["--listen", "y"], None).unwrap().listen, "y");
        assert!(matches!(parse(&[], None), Err(ConfigError::Clap(_))));
        let missing = Path::new("/nonexistent/given.toml");
        assert!(file_error(parse(&[], Some(missing))).contains("cannot read"));
    }
}
