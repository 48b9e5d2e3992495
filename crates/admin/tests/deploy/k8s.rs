//! The Kubernetes manifests: each overlay is rendered by kustomize, validated against
//! the Kubernetes OpenAPI schemas offline (`kubernetes-validate --strict`), and linted
//! for the security settings every workload must carry. The lint is itself tested: it
//! must notice each setting taken away.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;

use serde_yaml::Value;

use crate::{root, settings_variables};

const OVERLAYS: [&str; 2] = ["dev", "prod"];

fn render(overlay: &str) -> anyhow::Result<(PathBuf, Vec<Value>)> {
    let dir = root().join("deploy/k8s/overlays").join(overlay);
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .map_err(|e| anyhow::anyhow!("kubectl (run scripts/deploy-tools.sh): {e}"))?;
    anyhow::ensure!(
        output.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout)?;
    let file = std::env::temp_dir().join(format!(
        "aia-k8s-{overlay}-{}.yaml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&file, &text)?;
    let mut docs = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok((file, docs))
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> impl Iterator<Item = &'a Value> {
    let kind = kind.to_owned();
    docs.iter()
        .filter(move |d| d["kind"].as_str() == Some(kind.as_str()))
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("?")
}

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map_or(&[], Vec::as_slice)
}

/// The secret keys (outside its database login) a workload's main container reads.
fn secrets_read_by(workload: &str) -> &'static [&'static str] {
    match workload {
        "aia-gateway" => &[
            "REDIS_URL",
            "RATE_LIMIT_REDIS_URL",
            "COOKIE_SECRET",
            "JWT_SECRET_KEY",
        ],
        "aia-auth" => &[
            "REDIS_URL",
            "SMTP_URL",
            "ENCRYPTION_KEY",
            "API_KEY_SECRET",
            "JWT_SECRET_KEY",
            "JWT_SIGNING_KEY",
        ],
        "aia-session" => &["REDIS_URL", "SESSION_SECRET"],
        _ => &["REDIS_URL"],
    }
}

/// Everything wrong with `docs` as a secure deployment of the platform.
fn lint(docs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(p);
    let workloads: Vec<&Value> = kind(docs, "Deployment").chain(kind(docs, "Job")).collect();
    for w in &workloads {
        let (k, n) = (w["kind"].as_str().unwrap_or("?"), name(w));
        let pod = &w["spec"]["template"]["spec"];
        if pod["securityContext"]["runAsNonRoot"].as_bool() != Some(true) {
            problem(format!(
                "{k} {n}: pod securityContext.runAsNonRoot is not true"
            ));
        }
        if pod["securityContext"]["seccompProfile"]["type"].as_str() != Some("RuntimeDefault") {
            problem(format!("{k} {n}: pod seccompProfile is not RuntimeDefault"));
        }
        if pod["automountServiceAccountToken"].as_bool() != Some(false) {
            problem(format!("{k} {n}: mounts a service account token"));
        }
        if pod["hostNetwork"].as_bool() == Some(true) || pod["hostPID"].as_bool() == Some(true) {
            problem(format!("{k} {n}: shares a host namespace"));
        }
        let containers = seq(&pod["containers"]).iter().map(|c| (c, true));
        let inits = seq(&pod["initContainers"]).iter().map(|c| (c, false));
        for (c, main) in containers.chain(inits) {
            let cn = c["name"].as_str().unwrap_or("?");
            let sc = &c["securityContext"];
            if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
                problem(format!(
                    "{k} {n}/{cn}: allowPrivilegeEscalation is not false"
                ));
            }
            if sc["readOnlyRootFilesystem"].as_bool() != Some(true) {
                problem(format!("{k} {n}/{cn}: root filesystem is writable"));
            }
            if !seq(&sc["capabilities"]["drop"])
                .iter()
                .any(|d| d.as_str() == Some("ALL"))
            {
                problem(format!("{k} {n}/{cn}: capabilities are not all dropped"));
            }
            if sc["privileged"].as_bool() == Some(true) || sc["runAsUser"].as_i64() == Some(0) {
                problem(format!("{k} {n}/{cn}: privileged or root"));
            }
            for bound in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    if c["resources"][bound][resource].is_null() {
                        problem(format!("{k} {n}/{cn}: no {bound}.{resource}"));
                    }
                }
            }
            if main && k == "Deployment" {
                for probe in ["readinessProbe", "livenessProbe"] {
                    if c[probe].is_null() {
                        problem(format!("{k} {n}/{cn}: no {probe}"));
                    }
                }
            }
        }
        if k != "Deployment" {
            continue;
        }
        let spec = &w["spec"];
        if spec["strategy"]["type"].as_str() != Some("RollingUpdate") {
            problem(format!("Deployment {n}: not a rolling update"));
        }
        if seq(&pod["topologySpreadConstraints"]).is_empty() {
            problem(format!("Deployment {n}: no topology spread"));
        }
        let waits = seq(&pod["initContainers"]).iter().any(|c| {
            seq(&c["command"])
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                == ["aia", "migrate", "--check"]
        });
        // The gateway has no database login, so nothing to wait for.
        if !waits && n != "aia-gateway" {
            problem(format!("Deployment {n}: does not wait for the migrations"));
        }
        if pod["containers"][0]["command"][0].as_str() != Some(n) {
            problem(format!(
                "Deployment {n}: does not run the binary of its name"
            ));
        }
        let annotations = &w["spec"]["template"]["metadata"]["annotations"];
        if annotations["prometheus.io/scrape"].as_str() != Some("true") {
            problem(format!("Deployment {n}: not scraped by Prometheus"));
        }
        let label = &spec["selector"]["matchLabels"]["app.kubernetes.io/name"];
        let guarded = kind(docs, "PodDisruptionBudget")
            .any(|p| &p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == label);
        if !guarded {
            problem(format!("Deployment {n}: no PodDisruptionBudget"));
        }
        let grpc = n != "aia-gateway";
        if grpc && pod["containers"][0]["readinessProbe"]["grpc"].is_null() {
            problem(format!(
                "Deployment {n}: readiness is not the gRPC health check"
            ));
        }
    }
    for needed in ["aia-audit", "aia-session", "aia-auth", "aia-gateway"] {
        if !kind(docs, "Deployment").any(|d| name(d) == needed) {
            problem(format!("no Deployment {needed}"));
        }
    }
    if !kind(docs, "Job").any(|j| name(j) == "aia-migrate") {
        problem("no migration Job".to_owned());
    }
    for scaled in ["aia-gateway", "aia-auth"] {
        if !kind(docs, "HorizontalPodAutoscaler")
            .any(|h| h["spec"]["scaleTargetRef"]["name"].as_str() == Some(scaled))
        {
            problem(format!("no HorizontalPodAutoscaler for {scaled}"));
        }
    }
    // Default deny: a policy on every pod with both directions and no rule.
    let default_deny = kind(docs, "NetworkPolicy").any(|p| {
        let spec = &p["spec"];
        spec["podSelector"]
            .as_mapping()
            .is_some_and(|m| m.is_empty())
            && seq(&spec["policyTypes"]).len() == 2
            && spec["ingress"].is_null()
            && spec["egress"].is_null()
    });
    if !default_deny {
        problem("no default-deny NetworkPolicy".to_owned());
    }
    // Who may call whom: each internal service admits exactly its callers.
    let callers: [(&str, &[&str]); 3] = [
        ("aia-auth", &["aia-gateway"]),
        ("aia-session", &["aia-auth", "aia-gateway"]),
        ("aia-audit", &["aia-auth", "aia-gateway", "aia-session"]),
    ];
    for (service, expected) in callers {
        let admitted: BTreeSet<&str> = kind(docs, "NetworkPolicy")
            .filter(|p| {
                p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str()
                    == Some(service)
            })
            .flat_map(|p| seq(&p["spec"]["ingress"]))
            .flat_map(|rule| seq(&rule["from"]))
            .filter_map(|peer| {
                peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str()
            })
            .collect();
        let expected: BTreeSet<&str> = expected.iter().copied().collect();
        if admitted != expected {
            problem(format!("{service} admits {admitted:?}, not {expected:?}"));
        }
    }
    // Database logins: each service's containers read only its own (a member of its
    // role only), the gateway none, the migration Job the owner's.
    for w in kind(docs, "Deployment").chain(kind(docs, "Job")) {
        let n = name(w);
        let pod = &w["spec"]["template"]["spec"];
        let containers = seq(&pod["containers"])
            .iter()
            .chain(seq(&pod["initContainers"]));
        for c in containers {
            let databases: Vec<&str> = seq(&c["envFrom"])
                .iter()
                .filter_map(|e| e["secretRef"]["name"].as_str())
                .filter(|s| s.ends_with("-database"))
                .collect();
            let expected: Vec<String> = match n {
                "aia-gateway" => Vec::new(),
                other => vec![format!("{other}-database")],
            };
            if databases != expected {
                problem(format!(
                    "{n}/{}: database secrets {databases:?}, expected {expected:?}",
                    c["name"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    // Other secrets key by key, and only those the container reads: the gateway
    // faces the internet and must not hold auth's sealing or API-key keys.
    for w in kind(docs, "Deployment").chain(kind(docs, "Job")) {
        let n = name(w);
        let pod = &w["spec"]["template"]["spec"];
        let containers = seq(&pod["containers"]).iter().map(|c| (c, true));
        let inits = seq(&pod["initContainers"]).iter().map(|c| (c, false));
        for (c, main) in containers.chain(inits) {
            let cn = c["name"].as_str().unwrap_or("?");
            let whole = seq(&c["envFrom"])
                .iter()
                .filter_map(|e| e["secretRef"]["name"].as_str())
                .filter(|s| !s.ends_with("-database"));
            for secret in whole {
                problem(format!(
                    "{n}/{cn}: takes every key of Secret {secret}; name the ones it reads"
                ));
            }
            let allowed = if main {
                secrets_read_by(n)
            } else {
                &["REDIS_URL"][..]
            };
            let keys = seq(&c["env"])
                .iter()
                .filter_map(|e| e["valueFrom"]["secretKeyRef"]["key"].as_str());
            for key in keys {
                if !allowed.contains(&key) {
                    problem(format!("{n}/{cn}: given {key}, which it does not read"));
                }
            }
        }
    }
    // Egress "anywhere" never includes the link-local range (the cloud's metadata
    // service hands out the node's credentials), and the gateway (no database login)
    // reaches no Postgres.
    for p in kind(docs, "NetworkPolicy") {
        for rule in seq(&p["spec"]["egress"]) {
            for block in seq(&rule["to"]).iter().map(|peer| &peer["ipBlock"]) {
                let open = block["cidr"].as_str() == Some("0.0.0.0/0");
                let link_local_excepted = seq(&block["except"])
                    .iter()
                    .any(|e| e.as_str() == Some("169.254.0.0/16"));
                if open && !link_local_excepted {
                    problem(format!(
                        "NetworkPolicy {}: egress to 0.0.0.0/0 includes the metadata service",
                        name(p)
                    ));
                }
            }
            let postgres = seq(&rule["ports"])
                .iter()
                .any(|port| port["port"].as_u64() == Some(5432));
            if name(p) == "aia-gateway" && postgres {
                problem("NetworkPolicy aia-gateway: the gateway may reach Postgres".to_owned());
            }
        }
    }
    // Meshed pods: the proxies talk to each other on 4143, and the init container
    // reaches Postgres before the proxy runs.
    for d in kind(docs, "Deployment") {
        let annotations = &d["spec"]["template"]["metadata"]["annotations"];
        if annotations["linkerd.io/inject"].as_str() != Some("enabled") {
            continue;
        }
        let n = name(d);
        let skipped = annotations["config.linkerd.io/skip-outbound-ports"]
            .as_str()
            .unwrap_or("");
        if !skipped.split(',').any(|p| p.trim() == "5432") {
            problem(format!(
                "Deployment {n}: meshed, but its init container's Postgres port is not skipped"
            ));
        }
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        for (direction, peers) in [("ingress", "from"), ("egress", "to")] {
            let open = kind(docs, "NetworkPolicy").any(|p| {
                let selects = p["spec"]["podSelector"]["matchLabels"]
                    .as_mapping()
                    .is_some_and(|m| m.iter().all(|(k, v)| &labels[k] == v));
                selects
                    && seq(&p["spec"][direction]).iter().any(|rule| {
                        seq(&rule["ports"])
                            .iter()
                            .any(|port| port["port"].as_u64() == Some(4143))
                            && seq(&rule[peers]).iter().any(|peer| {
                                peer["podSelector"]["matchLabels"]["app.kubernetes.io/part-of"]
                                    .as_str()
                                    == Some("aia")
                            })
                    })
            });
            if !open {
                problem(format!(
                    "Deployment {n}: meshed, but no NetworkPolicy admits the proxy port 4143 ({direction})"
                ));
            }
        }
    }
    // Only the gateway is exposed.
    for ingress in kind(docs, "Ingress") {
        for rule in seq(&ingress["spec"]["rules"]) {
            for path in seq(&rule["http"]["paths"]) {
                let backend = path["backend"]["service"]["name"].as_str().unwrap_or("?");
                if backend != "gateway" {
                    problem(format!("Ingress {} exposes {backend}", name(ingress)));
                }
            }
        }
    }
    for service in kind(docs, "Service") {
        let t = service["spec"]["type"].as_str().unwrap_or("ClusterIP");
        if t != "ClusterIP" {
            problem(format!("Service {} is {t}", name(service)));
        }
    }
    // No secret value is committed.
    for secret in kind(docs, "Secret") {
        problem(format!("Secret {} is part of the manifests", name(secret)));
    }
    problems
}

fn kubernetes_validate() -> PathBuf {
    std::env::var_os("KUBERNETES_VALIDATE").map_or_else(
        || root().join("target/deploy-tools/venv/bin/kubernetes-validate"),
        PathBuf::from,
    )
}

#[test]
fn every_overlay_renders_validates_and_passes_the_security_lint() -> anyhow::Result<()> {
    for overlay in OVERLAYS {
        let (file, docs) = render(overlay)?;
        // The schemas of the oldest and the newest Kubernetes this supports.
        for version in ["1.30.0", "1.37.0"] {
            let output = Command::new(kubernetes_validate())
                .args(["--strict", "--quiet", "-k", version])
                .arg(&file)
                .output()
                .map_err(|e| {
                    anyhow::anyhow!("kubernetes-validate (run scripts/deploy-tools.sh): {e}")
                })?;
            let report = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success() && !report.contains("ERROR"),
                "{overlay} against {version}:\n{report}{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let problems = lint(&docs);
        assert!(problems.is_empty(), "{overlay}:\n{}", problems.join("\n"));
        std::fs::remove_file(&file)?;
    }
    Ok(())
}

/// Paths (in a Deployment) whose removal the lint must notice.
const REQUIRED: &[&[&str]] = &[
    &[
        "spec",
        "template",
        "spec",
        "securityContext",
        "runAsNonRoot",
    ],
    &[
        "spec",
        "template",
        "spec",
        "securityContext",
        "seccompProfile",
    ],
    &["spec", "template", "spec", "automountServiceAccountToken"],
    &["spec", "template", "spec", "topologySpreadConstraints"],
    &["spec", "template", "spec", "initContainers"],
    &["spec", "template", "metadata", "annotations"],
    &["spec", "strategy"],
];
const CONTAINER: &[&[&str]] = &[
    &["securityContext", "readOnlyRootFilesystem"],
    &["securityContext", "allowPrivilegeEscalation"],
    &["securityContext", "capabilities"],
    &["resources", "limits"],
    &["resources", "requests"],
    &["readinessProbe"],
    &["livenessProbe"],
];

fn remove(value: &mut Value, path: &[&str]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = value;
    for key in parents {
        match at.get_mut(*key) {
            Some(next) => at = next,
            None => return false,
        }
    }
    at.as_mapping_mut().and_then(|m| m.remove(*last)).is_some()
}

#[test]
fn the_lint_notices_each_missing_setting() -> anyhow::Result<()> {
    let (file, docs) = render("prod")?;
    std::fs::remove_file(&file)?;
    let target = docs
        .iter()
        .position(|d| d["kind"].as_str() == Some("Deployment"))
        .ok_or_else(|| anyhow::anyhow!("no Deployment"))?;
    let mut cases = 0;
    for path in REQUIRED {
        let mut broken = docs.clone();
        assert!(
            remove(&mut broken[target], path),
            "{path:?} not in the manifest"
        );
        assert!(!lint(&broken).is_empty(), "the lint misses {path:?}");
        cases += 1;
    }
    for path in CONTAINER {
        let mut broken = docs.clone();
        let container = broken[target]
            .get_mut("spec")
            .and_then(|s| s.get_mut("template"))
            .and_then(|t| t.get_mut("spec"))
            .and_then(|s| s.get_mut("containers"))
            .and_then(|c| c.get_mut(0))
            .ok_or_else(|| anyhow::anyhow!("no container"))?;
        assert!(remove(container, path), "{path:?} not in the container");
        assert!(
            !lint(&broken).is_empty(),
            "the lint misses container {path:?}"
        );
        cases += 1;
    }
    // Whole objects: a PodDisruptionBudget, an autoscaler, the default deny.
    for kind_name in [
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "Job",
    ] {
        let broken: Vec<Value> = docs
            .iter()
            .filter(|d| d["kind"].as_str() != Some(kind_name))
            .cloned()
            .collect();
        assert!(
            !lint(&broken).is_empty(),
            "the lint misses a missing {kind_name}"
        );
        cases += 1;
    }
    // The mesh: the proxies' port closed, or the init container sent through a
    // proxy that is not running yet.
    let without_proxy_port: Vec<Value> = docs
        .iter()
        .filter(|d| name(d) != "allow-mesh-proxy")
        .cloned()
        .collect();
    assert!(
        !lint(&without_proxy_port).is_empty(),
        "the lint misses the closed proxy port"
    );
    let mut unskipped = docs.clone();
    assert!(
        remove(
            &mut unskipped[target],
            &[
                "spec",
                "template",
                "metadata",
                "annotations",
                "config.linkerd.io/skip-outbound-ports"
            ]
        ),
        "no skip-outbound-ports annotation"
    );
    assert!(
        !lint(&unskipped).is_empty(),
        "the lint misses the unskipped Postgres port"
    );
    cases += 2;
    // A service given the owner's database login.
    let text =
        serde_yaml::to_string(&docs)?.replacen("aia-auth-database", "aia-migrate-database", 1);
    let owner_login: Vec<Value> = serde_yaml::from_str(&text)?;
    assert!(
        !lint(&owner_login).is_empty(),
        "the lint misses a service with the owner's login"
    );
    cases += 1;
    // The gateway given all of aia-secrets, or one of auth's keys.
    let gateway = docs
        .iter()
        .position(|d| d["kind"].as_str() == Some("Deployment") && name(d) == "aia-gateway")
        .ok_or_else(|| anyhow::anyhow!("no gateway"))?;
    for (field, entry) in [
        ("envFrom", "secretRef: {name: aia-secrets}"),
        (
            "env",
            "{name: ENCRYPTION_KEY, valueFrom: {secretKeyRef: {name: aia-secrets, key: ENCRYPTION_KEY}}}",
        ),
    ] {
        let mut broken = docs.clone();
        broken[gateway]
            .get_mut("spec")
            .and_then(|s| s.get_mut("template"))
            .and_then(|t| t.get_mut("spec"))
            .and_then(|s| s.get_mut("containers"))
            .and_then(|c| c.get_mut(0))
            .and_then(|c| c.get_mut(field))
            .and_then(Value::as_sequence_mut)
            .ok_or_else(|| anyhow::anyhow!("the gateway has no {field}"))?
            .push(serde_yaml::from_str(entry)?);
        assert!(!lint(&broken).is_empty(), "the lint misses {entry}");
        cases += 1;
    }
    // Egress opened to the metadata service, or the gateway to Postgres (edits of
    // the gateway's own policy).
    let policy = docs
        .iter()
        .position(|d| d["kind"].as_str() == Some("NetworkPolicy") && name(d) == "aia-gateway")
        .ok_or_else(|| anyhow::anyhow!("no gateway policy"))?;
    let text = serde_yaml::to_string(&docs[policy])?;
    for (what, from, to) in [
        ("metadata", "- 169.254.0.0/16", "- 10.255.255.0/24"),
        ("Postgres", "port: 6379", "port: 5432"),
    ] {
        assert!(text.contains(from), "{from} not in the gateway's policy");
        let mut broken = docs.clone();
        broken[policy] = serde_yaml::from_str(&text.replacen(from, to, 1))?;
        assert!(
            !lint(&broken).is_empty(),
            "the lint misses egress to {what}"
        );
        cases += 1;
    }
    assert_eq!(cases, REQUIRED.len() + CONTAINER.len() + 11);
    Ok(())
}

/// The production overlay's ConfigMap, with secrets from `aia gen-secrets` and
/// datastores as the template asks for them, is what `aia check-config` approves; and
/// it sets only variables the services read.
#[test]
fn the_production_overlay_passes_check_config() -> anyhow::Result<()> {
    let (file, docs) = render("prod")?;
    std::fs::remove_file(&file)?;
    let config = kind(&docs, "ConfigMap")
        .find(|c| name(c) == "aia-config")
        .ok_or_else(|| anyhow::anyhow!("no aia-config"))?;
    let known = settings_variables()?;
    let mut vars: HashMap<String, String> = HashMap::new();
    for (key, value) in config["data"].as_mapping().into_iter().flatten() {
        let key = key.as_str().unwrap_or_default().to_owned();
        assert!(
            known.contains(&key),
            "aia-config sets {key}, which no service reads"
        );
        vars.insert(key, value.as_str().unwrap_or_default().to_owned());
    }
    for s in aia_admin::secrets::generate(false)? {
        vars.insert(s.name.to_owned(), s.value);
    }
    vars.insert(
        "DATABASE_URL".to_owned(),
        "postgres://aia:pw@db.internal:5432/aia?sslmode=verify-full".to_owned(),
    );
    vars.insert(
        "REDIS_URL".to_owned(),
        "rediss://:pw@redis.internal:6380".to_owned(),
    );
    vars.insert(
        "SMTP_URL".to_owned(),
        "smtps://aia:pw@mail.example.com".to_owned(),
    );
    // Each Deployment sets it from its own namespace (the downward API).
    vars.insert("MESH_NAMESPACE".to_owned(), "aia".to_owned());
    let problems = aia_settings::production_readiness(&vars);
    assert!(problems.is_empty(), "{problems:?}");
    Ok(())
}

/// What `container` of workload `w` is given: the ConfigMap, its database login,
/// its literal, secret-key and namespace variables (secrets from `values`).
fn container_env(
    w: &Value,
    c: &Value,
    config: &Value,
    values: &HashMap<String, String>,
) -> HashMap<String, String> {
    let n = name(w);
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut vars: HashMap<String, String> = config["data"]
        .as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| (text(k), text(v)))
        .collect();
    let database = format!("{n}-database");
    if seq(&c["envFrom"])
        .iter()
        .any(|e| e["secretRef"]["name"].as_str() == Some(database.as_str()))
    {
        vars.insert(
            "DATABASE_URL".into(),
            "postgres://login:pw@db.internal:5432/aia?sslmode=verify-full".into(),
        );
    }
    for e in seq(&c["env"]) {
        let var = text(&e["name"]);
        let from = &e["valueFrom"];
        if let Some(value) = e["value"].as_str() {
            vars.insert(var, value.to_owned());
        } else if from["fieldRef"]["fieldPath"].as_str() == Some("metadata.namespace") {
            vars.insert(var, text(&w["metadata"]["namespace"]));
        } else if let Some(key) = from["secretKeyRef"]["key"].as_str() {
            match values.get(key) {
                Some(value) => {
                    vars.insert(var, value.clone());
                }
                None => assert_eq!(
                    from["secretKeyRef"]["optional"].as_bool(),
                    Some(true),
                    "{n} needs {key}, which no Secret holds"
                ),
            }
        }
    }
    vars
}

/// Every container of the production overlay starts in production on exactly what
/// it is given (the ConfigMap, its database login, the secret keys it names, from
/// `aia gen-secrets` and the datastores as the template asks for them): each service
/// on its own settings, the init containers and the migration Job (`aia migrate`) on
/// the shared ones. Naming keys one by one must not leave one out.
#[test]
fn each_production_container_starts_on_what_it_is_given() -> anyhow::Result<()> {
    use aia_settings::{
        AuditSettings, AuthSettings, Common, Env, GatewaySettings, SessionSettings,
    };
    let (file, docs) = render("prod")?;
    std::fs::remove_file(&file)?;
    let config = kind(&docs, "ConfigMap")
        .find(|c| name(c) == "aia-config")
        .ok_or_else(|| anyhow::anyhow!("no aia-config"))?;
    let mut values: HashMap<String, String> = aia_admin::secrets::generate(false)?
        .into_iter()
        .map(|s| (s.name.to_owned(), s.value))
        .collect();
    values.insert(
        "REDIS_URL".into(),
        "rediss://:pw@redis.internal:6380".into(),
    );
    values.insert("SMTP_URL".into(), "smtps://aia:pw@mail.example.com".into());
    let mut started = Vec::new();
    for w in kind(&docs, "Deployment").chain(kind(&docs, "Job")) {
        let n = name(w);
        let pod = &w["spec"]["template"]["spec"];
        let containers = seq(&pod["containers"]).iter().map(|c| (c, true));
        let inits = seq(&pod["initContainers"]).iter().map(|c| (c, false));
        for (c, main) in containers.chain(inits) {
            let vars = container_env(w, c, config, &values);
            assert_eq!(vars.get("APP_ENV").map(String::as_str), Some("production"));
            let env = Env::from_iter(vars);
            let problems = match (main, n) {
                (true, "aia-gateway") => GatewaySettings::from_env(env).err(),
                (true, "aia-auth") => AuthSettings::from_env(env).err(),
                (true, "aia-session") => SessionSettings::from_env(env).err(),
                (true, "aia-audit") => AuditSettings::from_env(env).err(),
                // `aia migrate` (the Job) and `aia migrate --check` (init containers).
                (_, "aia-migrate") | (false, _) => Common::from_env(env).err(),
                (true, other) => anyhow::bail!("an unknown workload {other}"),
            };
            let cn = c["name"].as_str().unwrap_or("?");
            assert!(problems.is_none(), "{n}/{cn}: {problems:?}");
            started.push(format!("{n}/{cn}"));
        }
    }
    assert_eq!(started.len(), 8, "{started:?}");
    Ok(())
}
