//! The command-line flags of the chat and of `lock-contender`: `--flag value` pairs and nothing
//! more, too little to need an argument-parsing crate. Each program reads the flags it knows
//! with [`read`]; a flag it does not read is refused, so a typo never passes silently.

use std::collections::BTreeMap;

/// The flags given, by name; each is taken out as it is read.
pub struct Flags(BTreeMap<String, String>);

impl Flags {
    /// The text of `flag`, if given.
    pub fn text(&mut self, flag: &str) -> Option<String> {
        self.0.remove(flag)
    }

    /// The number given for `flag`, or `default`.
    pub fn number(&mut self, flag: &str, default: u64) -> Result<u64, String> {
        match self.0.remove(flag) {
            None => Ok(default),
            Some(value) => value.parse().map_err(|e| format!("{flag} {value}: {e}")),
        }
    }
}

/// Reads the command line with `read`. `--help` prints `usage` and exits; a flag without a
/// value, a bad number or a flag `read` did not take prints why and `usage` to stderr and exits
/// with status 2.
pub fn read<T>(
    program: &str,
    usage: &str,
    read: impl FnOnce(&mut Flags) -> Result<T, String>,
) -> T {
    if std::env::args().any(|arg| arg == "--help" || arg == "-h") {
        println!("{usage}");
        std::process::exit(0);
    }
    let parsed = parse().and_then(|mut flags| {
        let value = read(&mut flags)?;
        match flags.0.keys().next() {
            None => Ok(value),
            Some(unknown) => Err(format!("unknown flag {unknown}")),
        }
    });
    parsed.unwrap_or_else(|e| {
        eprintln!("{program}: {e}\n{usage}");
        std::process::exit(2);
    })
}

fn parse() -> Result<Flags, String> {
    let mut flags = BTreeMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        flags.insert(flag, value);
    }
    Ok(Flags(flags))
}
