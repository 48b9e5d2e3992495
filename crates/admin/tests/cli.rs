//! `aia verify-audit-chain`, run as the operator runs it.

use aia_testkit::TestDb;
use diesel_async::RunQueryDsl;

/// The head a verification printed (`SEQ:HASH`).
fn head(text: &str) -> anyhow::Result<String> {
    text.split_whitespace()
        .find(|word| {
            word.split_once(':').is_some_and(|(seq, hash)| {
                seq.parse::<i64>().is_ok()
                    && hash.len() == 64
                    && hash.bytes().all(|b| b.is_ascii_hexdigit())
            })
        })
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no head printed: {text}"))
}

fn verify(db: &TestDb, args: &[&str]) -> anyhow::Result<(i32, String)> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_aia"))
        .arg("verify-audit-chain")
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("APP_ENV", "development")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.code().unwrap_or(-1), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_audit_chain_exits_1_and_names_the_altered_event() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let mut conn = db.connect().await?;
    diesel::sql_query(
        "INSERT INTO audit.events (id, occurred_at, event_type, outcome, producer) \
         SELECT gen_random_uuid(), now(), 'auth.login', 'success', 'test' FROM generate_series(1, 5)",
    )
    .execute(&mut conn)
    .await?;
    let (code, text) = verify(&db, &[])?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("intact: 5 events checked"), "{text}");
    let checkpoint = head(&text)?;
    assert!(
        checkpoint.starts_with("5:") && checkpoint.len() == 66,
        "{text}"
    );
    let (code, text) = verify(&db, &["--checkpoint", &checkpoint])?;
    assert_eq!(code, 0, "{text}");

    // The newest event deleted: what remains still links, the checkpoint is gone.
    diesel::sql_query("ALTER TABLE audit.events DISABLE TRIGGER events_append_only")
        .execute(&mut conn)
        .await?;
    diesel::sql_query("DELETE FROM audit.events WHERE seq = 5")
        .execute(&mut conn)
        .await?;
    let (code, text) = verify(&db, &[])?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("intact: 4 events checked"), "{text}");
    let (code, text) = verify(&db, &["--checkpoint", &checkpoint])?;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("BROKEN at event seq 5"), "{text}");
    let (code, text) = verify(&db, &["--checkpoint", "5:zz"])?;
    assert_eq!(code, 2, "a usage error: {text}");
    assert!(text.contains("SEQ:HASH"), "{text}");

    diesel::sql_query("UPDATE audit.events SET actor = 'someone else' WHERE seq = 4")
        .execute(&mut conn)
        .await?;
    let (code, text) = verify(&db, &[])?;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("BROKEN at event seq 4"), "{text}");
    drop(conn);
    db.drop_database().await?;
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct Sealed {
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    sealed: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    key_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    aad: String,
}

async fn sealed_values(conn: &mut diesel_async::AsyncPgConnection) -> anyhow::Result<Vec<Sealed>> {
    Ok(diesel::sql_query(
        "SELECT private_key AS sealed, sealing_key_id AS key_id, kid AS aad FROM auth.signing_keys \
         UNION ALL SELECT secret, sealing_key_id, user_id::text FROM auth.totp_credentials \
         ORDER BY aad",
    )
    .load(conn)
    .await?)
}

fn run(args: &[&str], vars: &[(&str, &str)]) -> anyhow::Result<(i32, String)> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_aia"))
        .args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.code().unwrap_or(-1), text))
}

/// `aia rotate-encryption-key`: every sealed value moves to the new key, opens with it
/// to the same secret, no longer opens with the old one; a second run changes
/// nothing; a wrong current key or a weak new one changes nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_encryption_key_reseals_everything_or_nothing() -> anyhow::Result<()> {
    use aia_tokens::seal::SealingKey;
    use diesel::sql_types::{Bytea, Text, Uuid as SqlUuid};

    let db = TestDb::create().await?;
    let secret = |n: u8| -> String {
        // 48 distinct-enough characters, different per n (test keys, not literals).
        (0..48u32)
            .filter_map(|i| char::from_u32(33 + (i * 7 + u32::from(n) * 13) % 90))
            .collect()
    };
    let (old, new, other) = (secret(1), secret(2), secret(3));
    let base = [
        ("DATABASE_URL", db.url.as_str()),
        ("APP_ENV", "development"),
    ];
    fn with<'a>(
        base: &[(&'a str, &'a str)],
        extra: &[(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
        base.iter().chain(extra).copied().collect()
    }
    // A signing key sealed under the old key, by the CLI as an operator makes one.
    let (code, text) = run(
        &["rotate-signing-key"],
        &with(&base, &[("ENCRYPTION_KEY", &old)]),
    )?;
    assert_eq!(code, 0, "{text}");
    // A TOTP secret sealed under the old key, as the auth service stores it.
    let mut conn = db.connect().await?;
    let user = uuid::Uuid::new_v4();
    diesel::sql_query(
        "INSERT INTO auth.users (id, email, password_hash) VALUES ($1, 'a@example.com', 'x')",
    )
    .bind::<SqlUuid, _>(user)
    .execute(&mut conn)
    .await?;
    let totp_secret = b"twenty byte secret!!".to_vec();
    let old_key = SealingKey::derive(old.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let new_key = SealingKey::derive(new.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sealed = old_key
        .seal(&totp_secret, user.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    diesel::sql_query(
        "INSERT INTO auth.totp_credentials (user_id, secret, sealing_key_id) VALUES ($1, $2, $3)",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<Bytea, _>(sealed)
    .bind::<Text, _>(old_key.id())
    .execute(&mut conn)
    .await?;
    let before = sealed_values(&mut conn).await?;
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|v| v.key_id == old_key.id()));

    // A weak new key, or a current key that sealed nothing here: refused, unchanged.
    for (current, candidate) in [(&old, "short-and-weak"), (&other, new.as_str())] {
        let (code, text) = run(
            &["rotate-encryption-key"],
            &with(
                &base,
                &[
                    ("ENCRYPTION_KEY", current),
                    ("NEW_ENCRYPTION_KEY", candidate),
                ],
            ),
        )?;
        assert_eq!(code, 1, "{text}");
        assert!(!text.contains(candidate) || candidate.len() < 20, "{text}");
        let now = sealed_values(&mut conn).await?;
        assert!(now.iter().all(|v| v.key_id == old_key.id()), "{text}");
    }

    let (code, text) = run(
        &["rotate-encryption-key"],
        &with(
            &base,
            &[("ENCRYPTION_KEY", &old), ("NEW_ENCRYPTION_KEY", &new)],
        ),
    )?;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("re-sealed 1 signing key(s) and 1 TOTP secret(s)"),
        "{text}"
    );
    let after = sealed_values(&mut conn).await?;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.key_id, new_key.id());
        let aad_bytes = match uuid::Uuid::parse_str(&a.aad) {
            Ok(id) => id.as_bytes().to_vec(),
            Err(_) => a.aad.as_bytes().to_vec(),
        };
        let opened = new_key.open(&a.sealed, &aad_bytes);
        let was = old_key.open(&b.sealed, &aad_bytes);
        assert!(
            opened.is_ok() && opened == was,
            "{} does not open to the same value",
            a.aad
        );
        assert!(old_key.open(&a.sealed, &aad_bytes).is_err());
    }
    // Idempotent.
    let (code, text) = run(
        &["rotate-encryption-key"],
        &with(
            &base,
            &[("ENCRYPTION_KEY", &old), ("NEW_ENCRYPTION_KEY", &new)],
        ),
    )?;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("re-sealed 0 signing key(s) and 0 TOTP secret(s)"),
        "{text}"
    );
    assert!(text.contains("(2 already were)"), "{text}");
    drop(conn);
    db.drop_database().await?;
    Ok(())
}

use aia_testkit::Count;

/// Whether the SCRAM-SHA-256 verifier `verifier` (as `pg_authid` keeps it) was made
/// from `password` (RFC 5802/7677: the StoredKey of the password's salted hash).
fn scram_matches(verifier: &str, password: &str) -> bool {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};

    let hmac = |key: &[u8], data: &[u8]| -> Option<Vec<u8>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
        mac.update(data);
        Some(mac.finalize().into_bytes().to_vec())
    };
    let parsed = (|| {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, _server) = keys.split_once(':')?;
        Some((
            iterations.parse::<u32>().ok()?,
            STANDARD.decode(salt).ok()?,
            STANDARD.decode(stored).ok()?,
        ))
    })();
    let Some((iterations, salt, stored)) = parsed else {
        return false;
    };
    // PBKDF2-HMAC-SHA-256, one block (the key is the hash's length).
    let Some(mut u) = hmac(
        password.as_bytes(),
        &[salt.as_slice(), &[0, 0, 0, 1]].concat(),
    ) else {
        return false;
    };
    let mut salted = u.clone();
    for _ in 1..iterations {
        let Some(next) = hmac(password.as_bytes(), &u) else {
            return false;
        };
        u = next;
        for (s, b) in salted.iter_mut().zip(&u) {
            *s ^= b;
        }
    }
    hmac(&salted, b"Client Key").is_some_and(|client| Sha256::digest(client).to_vec() == stored)
}

/// `aia migrate` with the services' login passwords set (Compose) makes each
/// service's own login: LOGIN, NOINHERIT, a member of its service's role only, its
/// password stored as a SCRAM verifier (never sent in clear). Connected as
/// `aia_auth_login`, nothing is reachable until `SET ROLE aia_auth`, and session's
/// role cannot be taken. A weak password is refused before anything is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_makes_each_services_own_login() -> anyhow::Result<()> {
    #[derive(diesel::QueryableByName)]
    struct Login {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        rolcanlogin: bool,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        rolinherit: bool,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        rolsuper: bool,
        #[diesel(sql_type = diesel::sql_types::Text)]
        verifier: String,
        #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::Text>)]
        member_of: Vec<String>,
    }

    let db = TestDb::create().await?;
    // Test passwords, not literals: 43 characters made here, one per service.
    let password = |n: u32| -> String {
        (0..43u32)
            .filter_map(|i| char::from_u32(48 + (i * 7 + n * 11) % 75))
            .filter(char::is_ascii_alphanumeric)
            .chain("Zq9".chars())
            .collect()
    };
    let (auth, session, audit) = (password(1), password(2), password(3));
    let vars = |auth: &str| {
        vec![
            ("DATABASE_URL", db.url.clone()),
            ("APP_ENV", "development".to_owned()),
            ("AUTH_DATABASE_PASSWORD", auth.to_owned()),
            ("SESSION_DATABASE_PASSWORD", session.clone()),
            ("AUDIT_DATABASE_PASSWORD", audit.clone()),
        ]
    };
    let migrate = |vars: Vec<(&str, String)>| {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(&["migrate"], &vars)
    };
    let (code, text) = migrate(vars("short"))?;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("AUTH_DATABASE_PASSWORD"), "{text}");
    assert!(!text.contains("applied"), "{text}");

    let (code, text) = migrate(vars(&auth))?;
    assert_eq!(code, 0, "{text}");
    for login in ["aia_auth_login", "aia_session_login", "aia_audit_login"] {
        assert!(text.contains(login), "{text}");
    }
    assert!(!text.contains(&auth), "the password was printed: {text}");
    let mut conn = db.connect().await?;
    let login = |name: &'static str| {
        diesel::sql_query(
            "SELECT r.rolcanlogin, r.rolinherit, r.rolsuper, a.rolpassword AS verifier, \
             ARRAY(SELECT g.rolname::text FROM pg_auth_members m \
                   JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid) AS member_of \
             FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = $1",
        )
        .bind::<diesel::sql_types::Text, _>(name)
    };
    let shaped = |found: &Login, role: &str, password: &str| {
        assert!(
            found.rolcanlogin && !found.rolinherit && !found.rolsuper,
            "{role}"
        );
        assert_eq!(found.member_of, vec![role.to_owned()]);
        assert!(
            scram_matches(&found.verifier, password),
            "{role}: not its password"
        );
    };
    for (name, role, password) in [
        ("aia_auth_login", "aia_auth", &auth),
        ("aia_session_login", "aia_session", &session),
        ("aia_audit_login", "aia_audit", &audit),
    ] {
        shaped(
            &login(name).get_result::<Login>(&mut conn).await?,
            role,
            password,
        );
    }

    // As the login: nothing until its role, and no other service's role.
    let as_login = db.url.replacen("postgres@", "aia_auth_login@", 1);
    let mut own = aia_db::tls::establish(&as_login).await?;
    let users = "SELECT count(*) AS n FROM auth.users";
    assert!(
        diesel::sql_query(users)
            .get_result::<Count>(&mut own)
            .await
            .is_err()
    );
    assert!(
        diesel::sql_query("SET ROLE aia_session")
            .execute(&mut own)
            .await
            .is_err()
    );
    diesel::sql_query("SET ROLE aia_auth")
        .execute(&mut own)
        .await?;
    assert_eq!(
        diesel::sql_query(users)
            .get_result::<Count>(&mut own)
            .await?
            .n,
        0
    );
    drop(own);

    // Widened by hand meanwhile (a superuser, another service's role, its own
    // granted to inherit): the next run (a restart of the Compose stack) narrows it
    // back, with its new password.
    for widen in [
        "ALTER ROLE aia_auth_login SUPERUSER INHERIT",
        "GRANT aia_session TO aia_auth_login",
        "REVOKE aia_auth FROM aia_auth_login",
        "GRANT aia_auth TO aia_auth_login",
        "ALTER ROLE aia_auth_login NOINHERIT",
    ] {
        diesel::sql_query(widen).execute(&mut conn).await?;
    }
    let renewed = password(4);
    let (code, text) = migrate(vars(&renewed))?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("updated the login aia_auth_login"), "{text}");
    shaped(
        &login("aia_auth_login")
            .get_result::<Login>(&mut conn)
            .await?,
        "aia_auth",
        &renewed,
    );
    drop(conn);
    db.drop_database().await?;
    Ok(())
}

/// Runs `aia create-admin --email EMAIL` on a pseudo-terminal (Python's `pty`),
/// answering its two password prompts with `first` and `second`: its exit code and
/// everything the terminal showed.
fn create_admin_at_a_terminal(
    db: &TestDb,
    email: &str,
    first: &str,
    second: &str,
) -> anyhow::Result<(i32, String)> {
    const SCRIPT: &str = r#"
import os, pty, select, sys, termios, time
binary, email, first, second, url = sys.argv[1:6]
pid, fd = pty.fork()
if pid == 0:
    os.execve(binary, [binary, "create-admin", "--email", email],
              {"DATABASE_URL": url, "APP_ENV": "development", "PATH": "/usr/bin:/bin"})
shown, answers = b"", [first, second]
while True:
    ready, _, _ = select.select([fd], [], [], 10)
    if not ready:
        # Waiting for input it never asked for: a failure, not a hang.
        os.kill(pid, 9)
        break
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    shown += chunk
    if answers and shown.count(b": ") > 2 - len(answers):
        # As a person would: typing once the prompt is up and the program has had
        # its moment to turn the echo off (if it ever does).
        for _ in range(100):
            if not termios.tcgetattr(fd)[3] & termios.ECHO:
                break
            time.sleep(0.02)
        os.write(fd, (answers.pop(0) + "\n").encode())
_, status = os.waitpid(pid, 0)
sys.stdout.write(shown.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            SCRIPT,
            env!("CARGO_BIN_EXE_aia"),
            email,
            first,
            second,
            db.url.as_str(),
        ])
        .output()?;
    let shown = String::from_utf8_lossy(&output.stdout).into_owned();
    Ok((output.status.code().unwrap_or(-1), shown))
}

/// At a terminal, `aia create-admin` asks for the password twice without echoing it
/// (it used to read a line with the terminal's echo on: the password stayed on the
/// screen and in the scrollback), and creates nothing when the two differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_admin_at_a_terminal_never_shows_the_password() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let password = "an admin passphrase nobody may read";
    let (code, shown) =
        create_admin_at_a_terminal(&db, "typo@example.com", password, "a different one")?;
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("differ"), "{shown}");
    assert!(
        !shown.contains("passphrase"),
        "the password was shown: {shown}"
    );
    let (code, shown) = create_admin_at_a_terminal(&db, "root@example.com", password, password)?;
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("Password for root@example.com"), "{shown}");
    assert!(shown.contains("created administrator"), "{shown}");
    assert!(
        !shown.contains("passphrase"),
        "the password was shown: {shown}"
    );
    let mut conn = db.connect().await?;
    let admins =
        diesel::sql_query("SELECT count(*) AS n FROM auth.users WHERE 'admin' = ANY(roles)")
            .get_result::<Count>(&mut conn)
            .await?
            .n;
    assert_eq!(admins, 1, "only the admin whose two answers matched");
    drop(conn);
    db.drop_database().await?;
    Ok(())
}

/// `aia create-admin` writes its audit event into auth's outbox in the same
/// transaction as the user (a refused duplicate writes neither), and the auth service's
/// relay delivers it once auth runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_admin_is_audited_through_auths_outbox() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let admin = |email: &str| {
        run(
            &["create-admin", "--email", email],
            &[
                ("DATABASE_URL", db.url.as_str()),
                ("APP_ENV", "development"),
                ("AIA_ADMIN_PASSWORD", "a long enough admin passphrase"),
            ],
        )
    };
    let (code, text) = admin("root@example.com")?;
    assert_eq!(code, 0, "{text}");
    let (code, text) = admin("root@example.com")?;
    assert_eq!(code, 1, "{text}");
    let mut conn = db.connect().await?;
    let waiting = diesel::sql_query("SELECT count(*) AS n FROM auth.audit_outbox")
        .get_result::<Count>(&mut conn)
        .await?
        .n;
    assert_eq!(waiting, 1, "one event for the one admin created");

    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let mut running = aia_testkit::services();
    let audit = running.audit(aia_testkit::env(&db, &prefix, &[])).await?;
    let _auth = running
        .auth(aia_testkit::env(
            &db,
            &prefix,
            &[("AUDIT_GRPC_URL", audit.url())],
        ))
        .await?;
    let delivered = aia_testkit::eventually(std::time::Duration::from_secs(10), || {
        let db = &db;
        async move {
            let mut conn = db.connect().await?;
            let n = diesel::sql_query(
                "SELECT count(*) AS n FROM audit.events e JOIN auth.users u ON u.id::text = e.subject \
                 WHERE e.event_type = 'admin.created' AND u.email = 'root@example.com'",
            )
            .get_result::<Count>(&mut conn)
            .await?
            .n;
            Ok((n == 1).then_some(n))
        }
    })
    .await?;
    assert_eq!(delivered, 1);
    running.stop().await;
    drop(conn);
    db.drop_database().await?;
    Ok(())
}

/// Retention: old events go, an anchor keeps the rest verifiable, the pruning is
/// itself on the chain, and removing a prefix without an anchor is still caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_audit_keeps_the_rest_of_the_chain_verifiable() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let mut conn = db.connect().await?;
    let insert = |n: i32| {
        diesel::sql_query(format!(
            "INSERT INTO audit.events (id, occurred_at, event_type, outcome, producer) \
             SELECT gen_random_uuid(), now(), 'auth.login', 'success', 'test' FROM generate_series(1, {n})"
        ))
    };
    insert(6).execute(&mut conn).await?;
    // Backdate them (as if recorded 40 days ago), with the chain re-made over it.
    diesel::sql_query("ALTER TABLE audit.events DISABLE TRIGGER events_append_only")
        .execute(&mut conn)
        .await?;
    diesel::sql_query(
        "DO $$ DECLARE r audit.events; prev bytea := '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea; BEGIN \
         FOR r IN SELECT * FROM audit.events ORDER BY seq LOOP \
           r.recorded_at := r.recorded_at - interval '40 days'; \
           UPDATE audit.events SET recorded_at = r.recorded_at, prev_hash = prev, hash = audit.event_digest(prev, r) \
             WHERE seq = r.seq RETURNING hash INTO prev; \
         END LOOP; END $$",
    )
    .execute(&mut conn)
    .await?;
    diesel::sql_query("ALTER TABLE audit.events ENABLE TRIGGER events_append_only")
        .execute(&mut conn)
        .await?;
    // A checkpoint taken now names the newest backdated event: the pruning's anchor.
    let (code, text) = verify(&db, &[])?;
    assert_eq!(code, 0, "{text}");
    let checkpoint = head(&text)?;
    assert!(checkpoint.starts_with("6:"), "{text}");
    // And one strictly inside what the pruning will remove.
    let (code, text) = verify(&db, &["--to", "3"])?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("newest event checked 3:"), "{text}");
    let inside = head(&text)?;
    insert(3).execute(&mut conn).await?;
    let (code, text) = verify(&db, &[])?;
    assert_eq!(code, 0, "{text}");

    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("APP_ENV", "development"),
    ];
    // Out of range: a usage error, not a panic (a huge value overflowed the date).
    for days in ["100000000", "7"] {
        let (code, text) = run(&["prune-audit", "--older-than-days", days], &env)?;
        assert_eq!(code, 2, "{days}: {text}");
    }
    let (code, text) = run(&["prune-audit", "--older-than-days", "30"], &env)?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("pruned 6 audit events"), "{text}");
    assert!(text.contains("anchor seq 6"), "{text}");
    let (code, text) = verify(&db, &[])?;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("intact: 4 events checked"),
        "3 kept and the retention event: {text}"
    );
    // The checkpoint's event was pruned: its anchor vouches for it, and says so; a
    // forged hash for it does not pass.
    let (code, text) = verify(&db, &["--checkpoint", &checkpoint])?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("removed by retention"), "{text}");
    let (code, text) = verify(&db, &["--checkpoint", &inside])?;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("checkpoint seq 3 was removed by retention"),
        "{text}"
    );
    let forged = format!("6:{}", "ab".repeat(32));
    let (code, text) = verify(&db, &["--checkpoint", &forged])?;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("BROKEN at event seq 6"), "{text}");
    let left = diesel::sql_query(
        "SELECT count(*) AS n FROM audit.events WHERE event_type = 'audit.retention'",
    )
    .get_result::<Count>(&mut conn)
    .await?
    .n;
    assert_eq!(left, 1);
    // Nothing older left: a second run changes nothing.
    let (code, text) = run(&["prune-audit", "--older-than-days", "30"], &env)?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("no audit event is older"), "{text}");
    // The newest events deleted behind the trigger's back, and an anchor inserted
    // above what remains to pass for a pruning: the latest checkpoint is not held.
    let (code, text) = verify(&db, &[])?;
    assert_eq!(code, 0, "{text}");
    let latest = head(&text)?;
    assert!(latest.starts_with("10:"), "{text}");
    for statement in [
        "ALTER TABLE audit.events DISABLE TRIGGER events_append_only",
        "DELETE FROM audit.events WHERE seq >= 9",
        "ALTER TABLE audit.events ENABLE TRIGGER events_append_only",
        "INSERT INTO audit.anchors (seq, hash, pruned, before) \
         VALUES (11, sha256('forged'), 2, now())",
    ] {
        diesel::sql_query(statement).execute(&mut conn).await?;
    }
    let (code, text) = verify(&db, &[])?;
    assert_eq!(code, 0, "the links alone hold: {text}");
    let (code, text) = verify(&db, &["--checkpoint", &latest])?;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("BROKEN at event seq 10"), "{text}");
    assert!(text.contains("the newest is 8"), "{text}");
    // Anchors cannot be changed; events cannot be deleted outside a pruning.
    let refused = diesel::sql_query("DELETE FROM audit.anchors")
        .execute(&mut conn)
        .await;
    assert!(refused.is_err());
    let refused = diesel::sql_query("DELETE FROM audit.events WHERE seq = 7")
        .execute(&mut conn)
        .await;
    assert!(refused.is_err());
    // Someone removes the oldest kept event behind the trigger's back: caught.
    diesel::sql_query("ALTER TABLE audit.events DISABLE TRIGGER events_append_only")
        .execute(&mut conn)
        .await?;
    diesel::sql_query("DELETE FROM audit.events WHERE seq = 7")
        .execute(&mut conn)
        .await?;
    let (code, text) = verify(&db, &[])?;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("BROKEN at event seq 8"), "{text}");
    drop(conn);
    db.drop_database().await?;
    Ok(())
}

/// Ends the child process when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Production requires `rediss://` for a remote Redis: the services speak TLS to it
/// and check its certificate, against the system's roots or, for a private CA, the
/// bundle `SSL_CERT_FILE` names. Run through `aia unlock-user`, which reaches Redis
/// as auth does, against a redis-server that listens with TLS only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_is_reached_over_tls_and_its_certificate_checked() -> anyhow::Result<()> {
    let pki = aia_testkit::pki::TestPki::new()?;
    let (cert, key) = pki.issue("localhost")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let password = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("aia-redis-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let _server = Killed(
        std::process::Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args(["--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(pki.ca_file())
            .args(["--tls-auth-clients", "no", "--requirepass", &password])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    aia_testkit::eventually(std::time::Duration::from_secs(10), || async {
        Ok(std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()
            .then_some(()))
    })
    .await?;
    let url = format!("rediss://:{password}@localhost:{port}");
    let ca = pki.ca_file().display().to_string();
    let unlock = |extra: &[(&str, &str)]| {
        let mut vars = vec![("APP_ENV", "development"), ("REDIS_URL", url.as_str())];
        vars.extend_from_slice(extra);
        run(&["unlock-user", "--email", "nobody@example.com"], &vars)
    };
    let (code, text) = unlock(&[("SSL_CERT_FILE", &ca)])?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("was not locked"), "{text}");
    // A certificate no trusted root signed: refused, the password never sent.
    let (code, text) = unlock(&[])?;
    assert_ne!(code, 0, "{text}");
    assert!(!text.contains(&password), "{text}");
    Ok(())
}

/// `aia withdraw-signing-key`: after a compromise, the tokens a key signed stop
/// verifying well before they expire (the gateway's key set is refetched every
/// 30 s), while sessions go on (a refresh gets a token of the new key). The key that
/// signs is refused until a newer one does; an unknown kid is refused; the
/// withdrawal is on the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_signing_key_stops_verifying_its_tokens() -> anyhow::Result<()> {
    use serde_json::{Value, json};

    // A test key, not a literal: 48 characters made here.
    let key: String = (0..48u32)
        .filter_map(|i| char::from_u32(33 + (i * 11 + 5) % 90))
        .collect();
    let stack = aia_testkit::Stack::start_with(&[
        ("ENCRYPTION_KEY", key.clone()),
        ("SIGNING_KEY_RELOAD_SECONDS", "1".to_owned()),
    ])
    .await?;
    let cli = |args: &[&str]| {
        run(
            args,
            &[
                ("DATABASE_URL", stack.db.url.as_str()),
                ("APP_ENV", "development"),
                ("ENCRYPTION_KEY", key.as_str()),
            ],
        )
    };
    let http = stack.http();
    let kids = || async {
        let jwks: Value = http
            .get(stack.url("/.well-known/jwks.json"))
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(
            jwks["keys"]
                .as_array()
                .map(|keys| {
                    keys.iter()
                        .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
    };
    let credentials =
        json!({"email": "withdrawal@example.com", "password": "violet kettle orbit 42"});
    let registered = http
        .post(stack.url("/v1/auth/register"))
        .json(&credentials)
        .send()
        .await?;
    assert_eq!(registered.status(), 202);
    let login = || async {
        let tokens: Value = http
            .post(stack.url("/v1/auth/login"))
            .json(&credentials)
            .send()
            .await?
            .json()
            .await?;
        anyhow::Ok(tokens)
    };
    let me_url = stack.url("/v1/auth/me");
    let me = |token: String| {
        let request = http.get(&me_url).bearer_auth(token);
        async move { anyhow::Ok(request.send().await?.status().as_u16()) }
    };
    let old_tokens = login().await?;
    let old_access = old_tokens["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(me(old_access.clone()).await?, 200);
    let before = kids().await?;
    let [old] = before.as_slice() else {
        anyhow::bail!("one key expected: {before:?}");
    };

    let (code, text) = cli(&["withdraw-signing-key", old])?;
    assert_eq!(code, 1, "the signing key was withdrawn: {text}");
    assert!(
        text.contains("rotate-signing-key --activate-in 0"),
        "{text}"
    );
    let (code, text) = cli(&["withdraw-signing-key", "no-such-kid"])?;
    assert_eq!(code, 1, "{text}");
    // A key published ahead can go while another signs.
    let (code, text) = cli(&["rotate-signing-key", "--activate-in", "3600"])?;
    assert_eq!(code, 0, "{text}");
    let pending = text
        .split_whitespace()
        .nth(3)
        .ok_or_else(|| anyhow::anyhow!("no kid printed: {text}"))?
        .trim_end_matches(':')
        .to_owned();
    let (code, text) = cli(&["withdraw-signing-key", &pending])?;
    assert_eq!(code, 0, "{text}");
    let (code, text) = cli(&["rotate-signing-key", "--activate-in", "0"])?;
    assert_eq!(code, 0, "{text}");
    let (code, text) = cli(&["withdraw-signing-key", old])?;
    assert_eq!(code, 0, "{text}");
    let (code, text) = cli(&["withdraw-signing-key", old])?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("withdrawn already"), "{text}");

    // The old token stops working; the key is no longer published, nor in the key set
    // the gateway verifies with.
    aia_testkit::eventually(std::time::Duration::from_secs(60), || {
        let token = old_access.clone();
        async move { Ok((me(token).await? == 401).then_some(())) }
    })
    .await?;
    // (Auth refuses it within a second at /me; the gateway's published set follows
    // at its next refresh of the key set, within 30 s.)
    let after = aia_testkit::eventually(std::time::Duration::from_secs(60), || async {
        let after = kids().await?;
        Ok((!after.contains(old)).then_some(after))
    })
    .await?;
    assert_eq!(after.len(), 1, "{after:?}");
    // The session goes on: its refresh token gets a token of the new key.
    let refreshed: Value = http
        .post(stack.url("/v1/auth/refresh"))
        .json(&json!({"refresh_token": old_tokens["refresh_token"]}))
        .send()
        .await?
        .json()
        .await?;
    let access = refreshed["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(me(access).await?, 200);
    let fresh = login().await?;
    let access = fresh["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(me(access).await?, 200);
    // On the record.
    aia_testkit::eventually(std::time::Duration::from_secs(20), || {
        let db = &stack.db;
        async move {
            let mut conn = db.connect().await?;
            let n = diesel::sql_query(
                "SELECT count(*) AS n FROM audit.events \
                 WHERE event_type = 'admin.signing_key_withdrawn'",
            )
            .get_result::<aia_testkit::Count>(&mut conn)
            .await?
            .n;
            // The pending key's and the old key's.
            Ok((n == 2).then_some(()))
        }
    })
    .await?;
    stack.stop().await;
    Ok(())
}
