//! `lull`'s own settings file: the coordinator, the submitter's token and the signing key come
//! from `--config FILE` when no flag or environment variable gives them; flags win; a file with
//! an unknown field is an error naming it.

use std::fs;

use lull_tests::{Cluster, guests};

#[test]
fn the_settings_file_gives_coordinator_token_and_key() {
    let cluster = Cluster::with_agents(&["a"], 1);
    let job = cluster.write_job(
        "configured",
        "name = \"configured\"\n[[module]]\npath = \"guest.wasm\"\nargs = [\"0\"]\n[resources]\nmemory = \"16MiB\"\n",
        &[("guest.wasm", &guests::hello(0))],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = dir.path().join("config.toml");
    fs::write(
        &settings,
        format!(
            "coordinator = \"{}\"\ncoordinator_key = \"{}\"\ntoken = \"{}\"\nkey = \"{}\"\n",
            cluster.api_url(),
            cluster.http_key().expect("the coordinator serves HTTPS"),
            cluster.token(),
            cluster.key().display()
        ),
    )
    .expect("writing the settings");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&settings, fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let settings = settings.to_str().expect("utf-8");

    // No token in the environment, no --key: the file gives both (and the harness's own
    // --coordinator flag points at the same place).
    let out = cluster.lull_with_token(
        None,
        &[
            "--config",
            settings,
            "submit",
            job.to_str().unwrap(),
            "--watch",
            "--json",
        ],
    );
    out.assert_success();
    assert!(!out.stderr.contains("warning"), "{out}");

    // A flag wins over the file: a wrong token on the command line is used, and refused.
    let out = cluster.lull_with_token(
        None,
        &[
            "--config",
            settings,
            "--token",
            "lull_0000000000000000000000000000000000000000",
            "status",
        ],
    );
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("unknown token"), "{out}");

    // A typo is an error that names the file and the field.
    let typo = dir.path().join("typo.toml");
    fs::write(&typo, "tokne = \"x\"\n").expect("writing");
    let out = cluster.lull_with_token(None, &["--config", typo.to_str().unwrap(), "status"]);
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("typo.toml") && out.stderr.contains("tokne"),
        "{out}"
    );
}
