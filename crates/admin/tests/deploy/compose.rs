//! `docker-compose.yml` against the Compose specification (typed parsing by
//! `compose_spec`, after the same interpolation Compose does) and against what exists
//! here (services, files, binaries, variables); the `Dockerfile` against the Makefile;
//! the production template against the variables the services read.

use std::collections::{BTreeSet, HashMap};

use serde_yaml::Value;

use crate::{read, root, settings_variables, workspace_binaries};

/// Compose's interpolation: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
/// `${VAR:?message}`, `${VAR?message}`. A variable without a default must be in `vars`.
fn interpolate(text: &str, vars: &HashMap<String, String>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| anyhow::anyhow!("unclosed ${{ in {text:.40}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.find([':', '-', '?']) {
                None => (expr, None),
                Some(i) => {
                    let op = expr[i..].trim_start_matches(':');
                    (&expr[..i], op.strip_prefix('-'))
                }
            };
            match (vars.get(name), default) {
                (Some(v), _) if !v.is_empty() => out.push_str(v),
                (_, Some(d)) => out.push_str(d),
                _ => anyhow::bail!("${{{name}}} has no value and no default"),
            }
            rest = &body[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..len];
            let value = vars
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("${name} has no value"))?;
            out.push_str(value);
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The Compose file as Compose sees it with a `.env` from `aia gen-secrets`.
fn compose() -> anyhow::Result<Value> {
    let set = aia_admin::secrets::generate(false)?;
    let vars: HashMap<String, String> = set
        .iter()
        .map(|s| (s.name.to_owned(), s.value.clone()))
        .collect();
    let text = interpolate(&read("docker-compose.yml")?, &vars)?;
    let mut value: Value = serde_yaml::from_str(&text)?;
    value.apply_merge()?;
    // The specification's own types: unknown keys, malformed ports, durations,
    // conditions... are refused here.
    let typed: compose_spec::Compose = serde_yaml::from_value(value.clone()).map_err(|e| {
        anyhow::anyhow!("docker-compose.yml does not follow the Compose specification: {e}")
    })?;
    // Networks, volumes, configs and secrets used are declared.
    typed.validate_all()?;
    Ok(value)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn interpolation_follows_compose() -> anyhow::Result<()> {
    let vars: HashMap<String, String> = [("A", "1"), ("E", "")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(
        interpolate("$A ${A} ${B:-x} ${E:-y} $$A ${A:?m}", &vars)?,
        "1 1 x y $A 1"
    );
    assert!(interpolate("${B}", &vars).is_err());
    assert!(interpolate("${B:?run gen-secrets}", &vars).is_err());
    Ok(())
}

#[test]
fn compose_file_follows_the_spec_and_references_only_what_exists() -> anyhow::Result<()> {
    let compose = compose()?;
    let services = compose["services"]
        .as_mapping()
        .ok_or_else(|| anyhow::anyhow!("no services"))?;
    let names: BTreeSet<String> = services
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    for needed in [
        "postgres", "redis", "migrate", "audit", "session", "auth", "gateway",
    ] {
        assert!(names.contains(needed), "{needed} missing");
    }
    let bins = workspace_binaries()?;
    let known = settings_variables()?;
    let shared = aia_admin::env_file::parse(&read("deploy/compose.env")?)?;
    for name in shared.keys() {
        assert!(
            known.contains(name),
            "deploy/compose.env sets {name}, which no service reads"
        );
    }
    let declared_volumes: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();

    for (name, service) in services {
        let name = name.as_str().unwrap_or_default();
        let optional = !service["profiles"].is_null();
        // Dependencies exist and their conditions can be met.
        if let Some(deps) = service["depends_on"].as_mapping() {
            for (dep, how) in deps {
                let dep = dep.as_str().unwrap_or_default();
                let target = services.get(dep).unwrap_or(&Value::Null);
                assert!(!target.is_null(), "{name} depends on unknown {dep}");
                match how["condition"].as_str() {
                    Some("service_healthy") => assert!(
                        !target["healthcheck"].is_null(),
                        "{name} waits for {dep} to be healthy; it has no health check"
                    ),
                    Some("service_completed_successfully") => assert_eq!(
                        target["restart"].as_str(),
                        Some("no"),
                        "{name} waits for {dep} to complete; it restarts"
                    ),
                    _ => {}
                }
            }
        }
        for dep in strings(&service["depends_on"]) {
            assert!(
                services.contains_key(dep.as_str()),
                "{name} depends on unknown {dep}"
            );
        }
        // Only the gateway is published (the observability profile's Grafana aside).
        if !service["ports"].is_null() {
            assert!(
                name == "gateway" || optional,
                "{name} publishes a port; only the gateway may"
            );
            for port in strings(&service["ports"]) {
                assert!(
                    port.starts_with("127.0.0.1:"),
                    "{name} publishes {port} beyond loopback"
                );
            }
        }
        // Host files mounted or read exist; named volumes are declared.
        for volume in strings(&service["volumes"]) {
            let source = volume.split(':').next().unwrap_or_default();
            if let Some(path) = source.strip_prefix("./") {
                assert!(root().join(path).exists(), "{name} mounts missing {source}");
            } else {
                assert!(
                    declared_volumes.contains(source),
                    "{name}: volume {source} undeclared"
                );
            }
        }
        for file in strings(&service["env_file"]) {
            assert!(root().join(&file).exists(), "{name} reads missing {file}");
        }
        if let Some(dockerfile) = service["build"]["dockerfile"].as_str() {
            assert!(
                root().join(dockerfile).exists(),
                "{name} builds missing {dockerfile}"
            );
        }
        if service["image"].as_str() != Some("aia:latest") {
            continue;
        }
        // The platform's own containers: a binary the workspace builds, locked down,
        // and (but for the one-shot migration) a health check on their admin port.
        let command = strings(&service["command"]);
        let binary = command.first().cloned().unwrap_or_default();
        assert!(
            bins.contains(&binary),
            "{name} runs {binary}, not a workspace binary"
        );
        assert_eq!(
            service["read_only"].as_bool(),
            Some(true),
            "{name} root fs writable"
        );
        assert_eq!(
            strings(&service["cap_drop"]),
            vec!["ALL"],
            "{name} keeps capabilities"
        );
        if let Some(env) = service["environment"].as_mapping() {
            for key in env.keys().filter_map(Value::as_str) {
                assert!(
                    known.contains(key),
                    "{name} sets {key}, which no service reads"
                );
            }
        }
        if name == "migrate" {
            assert_eq!(command, vec!["aia", "migrate"]);
            continue;
        }
        // The admin CLI's container (profile `tools`): runs when asked, no port.
        if name == "admin" {
            assert!(optional, "the admin CLI's container starts with the stack");
            assert_eq!(binary, "aia");
            assert_eq!(service["restart"].as_str(), Some("no"));
            continue;
        }
        let admin = format!("{}_ADMIN_ADDR", name.to_uppercase());
        let port = shared
            .get(&admin)
            .and_then(|a| a.rsplit(':').next())
            .ok_or_else(|| anyhow::anyhow!("deploy/compose.env lacks {admin}"))?;
        assert_eq!(
            strings(&service["healthcheck"]["test"]),
            vec![
                "CMD".to_owned(),
                "aia".to_owned(),
                "healthcheck".to_owned(),
                format!("http://127.0.0.1:{port}/readyz")
            ],
            "{name}'s health check"
        );
        assert!(
            service["depends_on"]["migrate"]["condition"].as_str()
                == Some("service_completed_successfully")
                || !service["depends_on"]["auth"].is_null(),
            "{name} may start before the migration"
        );
    }
    Ok(())
}

#[test]
fn compose_refuses_to_start_without_the_generated_secrets() -> anyhow::Result<()> {
    let text = read("docker-compose.yml")?;
    let error = interpolate(&text, &HashMap::new())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("has no value"), "{error}");
    Ok(())
}

#[test]
fn dockerfile_builds_with_make_and_runs_unprivileged() -> anyhow::Result<()> {
    let dockerfile = read("Dockerfile")?;
    let makefile = read("Makefile")?;
    let targets: BTreeSet<&str> = makefile
        .lines()
        .filter_map(|l| l.split_once(':').map(|(t, _)| t))
        .filter(|t| !t.is_empty() && !t.contains([' ', '\t', '$', '.', '=']))
        .collect();
    let runs: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("RUN "))
        .collect();
    let make_runs: Vec<&str> = runs
        .iter()
        .filter_map(|r| r.trim().strip_prefix("make "))
        .collect();
    assert_eq!(
        make_runs,
        vec!["release"],
        "the workspace must be built by `make release`"
    );
    for target in &make_runs {
        assert!(targets.contains(target), "make {target}: no such target");
    }
    let recipe = makefile
        .split("\nrelease:")
        .nth(1)
        .and_then(|r| r.lines().nth(1))
        .unwrap_or_default();
    assert_eq!(
        recipe.trim(),
        "cargo build --release --locked --workspace --bins"
    );
    // No build step compiles the workspace behind make's back.
    for run in &runs {
        assert!(!run.contains("cargo build"), "RUN {run}");
    }
    // Every binary reaches the runtime image.
    for bin in workspace_binaries()? {
        assert!(
            dockerfile.contains(&format!(
                "COPY --from=builder /src/target/release/{bin} /usr/local/bin/{bin}"
            )),
            "{bin} is not in the image"
        );
    }
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap_or_default();
    assert!(
        runtime.starts_with("gcr.io/distroless/"),
        "runtime stage: {runtime:.60}"
    );
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap_or("root");
    assert!(
        !matches!(user.split(':').next(), Some("root" | "0")),
        "the image runs as {user}"
    );
    let ignored = read(".dockerignore")?;
    for secret in [".env", "*.pem", "*.key", "target/"] {
        assert!(
            ignored.lines().any(|l| l == secret),
            ".dockerignore lacks {secret}"
        );
    }
    Ok(())
}

#[test]
fn production_template_lists_every_variable_with_a_comment() -> anyhow::Result<()> {
    let template = read(".env.production.template")?;
    let lines: Vec<&str> = template.lines().collect();
    let is_setting = |line: &str, name: &str| {
        let line = line.trim_start_matches("# ").trim();
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('='))
    };
    for name in settings_variables()? {
        let at = lines.iter().position(|l| is_setting(l, &name));
        assert!(
            at.is_some(),
            ".env.production.template does not list {name}"
        );
        let at = at.unwrap_or_default();
        // The line above is a description: a comment that is not itself a setting.
        let above = at.checked_sub(1).map(|i| lines[i]).unwrap_or_default();
        let describes = above.starts_with("# ")
            && !above[2..]
                .split_once('=')
                .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        assert!(describes, "{name} has no comment above it");
    }
    // No value is filled in for a secret.
    let vars = aia_admin::env_file::parse(&template)?;
    for secret in [
        "ENCRYPTION_KEY",
        "API_KEY_SECRET",
        "SESSION_SECRET",
        "COOKIE_SECRET",
        "DATABASE_URL",
        "REDIS_URL",
        "SMTP_URL",
    ] {
        assert_eq!(vars.get(secret).map(String::as_str), Some(""), "{secret}");
    }
    Ok(())
}
