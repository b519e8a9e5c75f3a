//! `lull completions SHELL`: a script each shell accepts, naming every command.

use std::process::Command;

fn completions(shell: &str) -> std::process::Output {
    Command::new(lull_tests::binary("lull"))
        .args(["completions", shell])
        .output()
        .expect("running lull completions")
}

#[test]
fn completion_scripts_name_the_commands_and_bash_accepts_its_own() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = completions(shell);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for command in [
            "submit",
            "status",
            "results",
            "logs",
            "delete",
            "drain",
            "completions",
        ] {
            assert!(script.contains(command), "{shell} script lacks {command}");
        }
    }
    // bash itself parses the bash script without running it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lull.bash");
    std::fs::write(&path, completions("bash").stdout).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(check.status.success(), "{check:?}");

    let bad = completions("tcsh");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("invalid value 'tcsh'") && err.contains("bash"),
        "{err}"
    );
}
