//! The shipped rollback recipes, run for real where their systems run here: release
//! directories with a supervised process, a private PostgreSQL cluster, a private Redis,
//! SQLite files, alembic. Recipes for vendor CLIs (Docker Compose, PM2, Heroku, AWS ECS,
//! Azure, Terraform) run against recording stand-ins first on PATH, and the tests assert
//! the exact argv each would run.
//!
//! Each test loads a configuration that uses the recipe, so what runs is what `check`
//! validated: the recipe's expansion into ordinary steps, carried out by the real actions.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rearguard::action::{Action, ActionContext, ActionOutput};
use rearguard::config::{ActionSpec, Step};

use crate::support;

/// Where the recipes' scripts are in the source tree.
pub(crate) fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/recipes")
}

fn ctx(from: &str, to: &str) -> ActionContext {
    ActionContext {
        incident: "inc-42".to_owned(),
        target: "shop".to_owned(),
        rule: "errors".to_owned(),
        from_revision: Some(from.to_owned()),
        to_revision: Some(to.to_owned()),
        bad_revisions: Vec::new(),
        attempt: 1,
    }
}

/// The steps of the one plan of a configuration whose `[[plan]]` uses `step` (TOML of one
/// `[[plan.step]]` table, without the header); `scripts_dir` points at the source tree.
fn plan_steps(step: &str) -> Vec<Step> {
    let toml = format!(
        "[[plan]]\nname = \"back\"\n\n[[plan.step]]\nscripts_dir = {:?}\n{step}\n",
        scripts_dir().display().to_string()
    );
    let mut cfg = support::config(&toml);
    cfg.plans.remove(0).steps
}

/// Runs steps in order as the daemon would (stopping at the first failure), with `path`
/// put first on PATH for exec steps. Returns every step's output.
async fn run_plan(steps: &[Step], ctx: &ActionContext, path: Option<&Path>) -> Vec<ActionOutput> {
    let client = rearguard::http::client();
    let mut outputs = Vec::new();
    for step in steps {
        let mut spec = step.action.clone();
        if let (ActionSpec::Exec(exec), Some(dir)) = (&mut spec, path) {
            let inherited = std::env::var("PATH").unwrap_or_default();
            exec.env
                .insert("PATH".to_owned(), format!("{}:{inherited}", dir.display()));
        }
        let out = Action::new(&spec, &client).run(ctx, step.timeout).await;
        let ok = out.ok;
        outputs.push(out);
        if !ok {
            break;
        }
    }
    outputs
}

fn assert_all_ok(outputs: &[ActionOutput], steps: &[Step]) {
    assert_eq!(
        outputs.len(),
        steps.len(),
        "not every step ran: {outputs:#?}"
    );
    for (o, s) in outputs.iter().zip(steps) {
        assert!(o.ok, "step {:?} failed: {o:#?}", s.name);
    }
}

/// The path of `program` on PATH, or in PostgreSQL's versioned directories; fails the test
/// naming the Debian package to install when it is missing.
pub(crate) fn require(program: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .collect();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed: apt-get install -y {package}"))
}

/// Runs a command to completion and returns its stdout; panics with its output on failure.
pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn kill(pid: u32) {
    // SAFETY: kill(2) on a process this test started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

async fn wait_gone(pid: u32) {
    support::poll_until(Duration::from_secs(10), || support::process_is_gone(pid))
        .await
        .unwrap_or_else(|_| panic!("process {pid} did not exit"));
}

// ---------------------------------------------------------------------------------------
// systemd-release

/// A release layout with a supervised process: `systemctl` is a stand-in that restarts the
/// real process from the release `current` names, as systemd would, and records its argv.
struct Service {
    dir: tempfile::TempDir,
}

impl Service {
    fn new() -> Service {
        let dir = support::temp_dir();
        let d = dir.path();
        for (rev, color) in [("v1", "blue"), ("v2", "green")] {
            let release = d.join("releases").join(rev);
            std::fs::create_dir_all(release.join("config-backup")).unwrap();
            std::fs::write(release.join("VERSION"), rev).unwrap();
            std::fs::write(
                release.join("config-backup/shop.env"),
                format!("COLOR={color}\n"),
            )
            .unwrap();
            std::fs::write(
                release.join("config-backup/limits.conf"),
                format!("{rev} limits\n"),
            )
            .unwrap();
            // The service: reports what it runs with, then stays up until killed.
            write_script(
                &release.join("serve"),
                "#!/bin/bash\nset -euo pipefail\nhere=$(dirname \"$0\")\n\
                 echo \"$(cat \"$here/VERSION\") $(cat \"$ETC/shop.env\")\" > \"$STATE/status\"\n\
                 exec sleep 600\n",
            );
        }
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::create_dir_all(d.join("bin")).unwrap();
        std::fs::create_dir_all(d.join("state")).unwrap();
        std::fs::write(d.join("etc/shop.env"), "COLOR=green\n").unwrap();
        std::fs::write(d.join("etc/limits.conf"), "v2 limits\n").unwrap();
        std::os::unix::fs::symlink("releases/v2", d.join("current")).unwrap();
        write_script(
            &d.join("bin/systemctl"),
            &format!(
                r#"#!/bin/bash
set -euo pipefail
export ETC={etc} STATE={state}
echo "$*" >> "$STATE/systemctl.log"
pid=$(cat "$STATE/pid" 2>/dev/null || true)
case "$1" in
  restart)
    if [[ -n $pid ]]; then kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; fi
    rm -f "$STATE/status"
    setsid {current}/serve >/dev/null 2>&1 < /dev/null &
    echo $! > "$STATE/pid"
    for _ in $(seq 100); do [[ -s $STATE/status ]] && exit 0; sleep 0.05; done
    exit 1 ;;
  is-active) [[ -n $pid ]] && kill -0 "$pid" ;;
  *) exit 2 ;;
esac
"#,
                etc = d.join("etc").display(),
                state = d.join("state").display(),
                current = d.join("current").display(),
            ),
        );
        Service { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_default()
    }

    fn pid(&self) -> Option<u32> {
        self.read("state/pid").trim().parse().ok()
    }

    /// Starts v2 as the running service, through the stand-in.
    fn start(&self) -> u32 {
        run(Command::new(self.path("bin/systemctl")).args(["restart", "shop.service"]));
        std::fs::remove_file(self.path("state/systemctl.log")).unwrap();
        self.pid().expect("the service started")
    }

    fn recipe(&self, extra: &str) -> String {
        format!(
            "type = \"recipe\"\nrecipe = \"systemd-release\"\nwith = {{ current = {:?}, unit = \"shop.service\", systemctl = {:?}, config_files = [{:?}, {:?}]{extra} }}",
            self.path("current").display().to_string(),
            self.path("bin/systemctl").display().to_string(),
            self.path("etc/shop.env").display().to_string(),
            self.path("etc/limits.conf").display().to_string(),
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            kill(pid);
        }
    }
}

#[tokio::test]
async fn systemd_release_recipe_switches_back_restores_config_and_restarts_the_service() {
    let svc = Service::new();
    let old_pid = svc.start();
    assert_eq!(svc.read("state/status"), "v2 COLOR=green\n");

    let health = support::serve(
        axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" })),
    )
    .await;
    let steps = plan_steps(&svc.recipe(&format!(", health_url = {:?}", health.url("/healthz"))));
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "systemd-release: switch current to the previous release",
            "systemd-release: restore config files from the release's backup",
            "systemd-release: restart the unit",
            "systemd-release: check the unit is active",
            "systemd-release: check the health URL",
        ]
    );
    let outputs = run_plan(&steps, &ctx("v2", "v1"), None).await;
    assert_all_ok(&outputs, &steps);

    assert_eq!(
        std::fs::read_link(svc.path("current")).unwrap(),
        Path::new("releases/v1")
    );
    assert_eq!(svc.read("etc/shop.env"), "COLOR=blue\n");
    assert_eq!(svc.read("etc/limits.conf"), "v1 limits\n");
    // Nothing is lost: the files replaced are kept beside the originals.
    assert_eq!(
        svc.read("etc/shop.env.before-rollback-from-v2"),
        "COLOR=green\n"
    );
    // The process that runs now is a new one, started from v1 with v1's configuration.
    wait_gone(old_pid).await;
    let new_pid = svc.pid().unwrap();
    assert_ne!(new_pid, old_pid);
    assert!(!support::process_is_gone(new_pid));
    assert_eq!(svc.read("state/status"), "v1 COLOR=blue\n");
    assert_eq!(
        svc.read("state/systemctl.log"),
        "restart shop.service\nis-active --quiet shop.service\n"
    );
    assert_eq!(health.request_count(), 1);
}

#[tokio::test]
async fn systemd_release_recipe_changes_no_config_file_when_one_backup_is_missing() {
    let svc = Service::new();
    let pid = svc.start();
    std::fs::remove_file(svc.path("releases/v1/config-backup/limits.conf")).unwrap();

    let steps = plan_steps(&svc.recipe(""));
    let outputs = run_plan(&steps, &ctx("v2", "v1"), None).await;
    assert_eq!(
        outputs.len(),
        2,
        "the plan stops at the restore: {outputs:#?}"
    );
    let error = outputs[1].error.clone().unwrap_or_default();
    assert!(
        outputs[1]
            .output
            .contains("limits.conf is missing; nothing was changed"),
        "{outputs:#?} {error}"
    );
    assert_eq!(svc.read("etc/shop.env"), "COLOR=green\n");
    assert!(!svc.path("etc/shop.env.before-rollback-from-v2").exists());
    assert_eq!(svc.pid(), Some(pid), "the service was not restarted");
}

// ---------------------------------------------------------------------------------------
// postgres-restore

/// A private PostgreSQL cluster in a temporary directory, listening only on a unix socket
/// there, run as the `postgres` user when the test runs as root. Stopped by its PID.
pub(crate) struct Postgres {
    pub(crate) dir: tempfile::TempDir,
    pid: u32,
}

impl Postgres {
    pub(crate) async fn start() -> Postgres {
        let initdb = require("initdb", "postgresql");
        let pg_ctl = require("pg_ctl", "postgresql");
        let dir = support::temp_dir();
        let root = unsafe { libc::geteuid() } == 0;
        let as_owner = |program: &Path| {
            if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        if root {
            run(Command::new("chown").arg("postgres").arg(dir.path()));
        }
        let data = dir.path().join("data");
        run(as_owner(&initdb)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .stdout(Stdio::null()));
        run(as_owner(&pg_ctl)
            .arg("-D")
            .arg(&data)
            .arg("-o")
            .arg(format!(
                "-k {} -c listen_addresses='' -c fsync=off",
                dir.path().display()
            ))
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-w", "start"])
            .stdout(Stdio::null()));
        let pid = std::fs::read_to_string(data.join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Postgres { dir, pid }
    }

    pub(crate) fn socket_dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    pub(crate) fn psql(&self, db: &str, sql: &str) -> String {
        run(Command::new(require("psql", "postgresql-client"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-U", "postgres", "-d", db, "-c", sql]))
        .trim()
        .to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGINT);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !support::process_is_gone(self.pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // A postmaster that did not stop is killed: the test leaves nothing running.
        if !support::process_is_gone(self.pid) {
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
            }
        }
    }
}

#[tokio::test]
async fn postgres_restore_recipe_restores_a_real_dump_and_verifies_integrity() {
    let pg = Postgres::start().await;
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql("postgres", "CREATE ROLE app LOGIN");
    pg.psql(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, state text NOT NULL);
         INSERT INTO orders SELECT g, 'paid' FROM generate_series(1, 100) g;",
    );
    let dump = pg.dir.path().join("v1.dump");
    run(Command::new(require("pg_dump", "postgresql-client"))
        .args(["-Fc", "-h"])
        .arg(pg.socket_dir())
        .args(["-U", "postgres", "-f"])
        .arg(&dump)
        .arg("shop"));
    // The bad release damages the data, and its traffic is still connected.
    pg.psql(
        "shop",
        "DELETE FROM orders WHERE id > 50; UPDATE orders SET state = 'lost';",
    );
    let mut traffic = Command::new(require("psql", "postgresql-client"))
        .args(["-X", "-h"])
        .arg(pg.socket_dir())
        .args(["-U", "app", "-d", "shop", "-c", "SELECT pg_sleep(600)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    support::poll_until(Duration::from_secs(10), || {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
        ) == "1"
    })
    .await
    .expect("the application's session connected");

    let recipe = |queries: &str| {
        format!(
            "type = \"recipe\"\nrecipe = \"postgres-restore\"\nwith = {{ database = \"shop\", host = {:?}, user = \"postgres\", backup = {:?}, integrity_queries = [{queries}] }}",
            pg.socket_dir(),
            format!("{}/{{to_revision}}.dump", pg.socket_dir()),
        )
    };
    let steps = plan_steps(&recipe(
        "\"SELECT count(*) = 100 FROM orders\", \"SELECT bool_and(state = 'paid') FROM orders\"",
    ));
    assert_eq!(steps.len(), 4);
    let outputs = run_plan(&steps, &ctx("v2", "v1"), None).await;
    assert_all_ok(&outputs, &steps);
    assert!(
        outputs[0].output.contains("1 other session(s) ended"),
        "{outputs:#?}"
    );
    let status = tokio::task::spawn_blocking(move || traffic.wait().unwrap())
        .await
        .unwrap();
    assert!(!status.success(), "the application's session was ended");
    assert_eq!(
        pg.psql(
            "shop",
            "SELECT count(*), min(state), max(state) FROM orders"
        ),
        "100|paid|paid"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT datconnlimit FROM pg_database WHERE datname = 'shop'"
        ),
        "-1"
    );

    // An integrity query that fails stops the plan with traffic still stopped.
    pg.psql("shop", "DELETE FROM orders WHERE id = 1");
    let steps = plan_steps(&recipe("\"SELECT count(*) = 99 FROM orders\""));
    let outputs = run_plan(&steps, &ctx("v2", "v1"), None).await;
    assert_eq!(outputs.len(), 3, "{outputs:#?}");
    assert!(!outputs[2].ok);
    assert!(
        outputs[2]
            .output
            .contains("SELECT count(*) = 99 FROM orders returned f"),
        "{outputs:#?}"
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT datconnlimit FROM pg_database WHERE datname = 'shop'"
        ),
        "0"
    );
}

#[tokio::test]
async fn postgres_restore_recipe_with_a_missing_backup_changes_nothing_but_stopping_traffic() {
    let pg = Postgres::start().await;
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql("shop", "CREATE TABLE t (a int); INSERT INTO t VALUES (7);");
    let steps = plan_steps(&format!(
        "type = \"recipe\"\nrecipe = \"postgres-restore\"\nwith = {{ database = \"shop\", host = {:?}, user = \"postgres\", backup = \"/nonexistent/{{to_revision}}.dump\" }}",
        pg.socket_dir()
    ));
    let outputs = run_plan(&steps, &ctx("v2", "v1"), None).await;
    assert_eq!(outputs.len(), 2, "{outputs:#?}");
    assert!(
        outputs[1].output.contains(
            "backup /nonexistent/v1.dump does not exist or cannot be read; nothing was changed"
        ),
        "{outputs:#?}"
    );
    assert_eq!(pg.psql("shop", "SELECT a FROM t"), "7");
}

// ---------------------------------------------------------------------------------------
// redis-flush

/// A private redis-server on a unix socket in a temporary directory; killed by its PID.
struct Redis {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Redis {
    async fn start() -> Redis {
        let server = require("redis-server", "redis-server");
        let dir = support::temp_dir();
        let child = Command::new(server)
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(dir.path().join("redis.sock"))
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let redis = Redis { dir, child };
        support::poll_until(Duration::from_secs(10), || {
            redis
                .cli_status(&["PING"])
                .is_some_and(|out| out.trim() == "PONG")
        })
        .await
        .expect("redis-server answers");
        redis
    }

    fn socket(&self) -> String {
        self.dir.path().join("redis.sock").display().to_string()
    }

    fn cli_status(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(require("redis-cli", "redis-tools"))
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn cli(&self, args: &[&str]) -> String {
        self.cli_status(args).expect("redis-cli runs")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn redis_flush_recipe_unlinks_only_the_keys_matching_its_patterns() {
    let redis = Redis::start().await;
    let mut mset = vec!["MSET".to_owned()];
    for i in 0..2500 {
        mset.extend([format!("cache:v2:{i}"), "x".to_owned()]);
    }
    mset.extend(["session:a\nb", "x", "keep:config", "x", "cachet", "x"].map(str::to_owned));
    let args: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(redis.cli(&args).trim(), "OK");

    let steps = plan_steps(&format!(
        "type = \"recipe\"\nrecipe = \"redis-flush\"\nwith = {{ socket = {:?}, patterns = [\"cache:*\", \"session:*\"], batch = 300 }}",
        redis.socket()
    ));
    let outputs = run_plan(&steps, &ctx("v2", "v1"), None).await;
    assert_all_ok(&outputs, &steps);
    assert!(
        outputs[0]
            .output
            .contains("unlinked 2500 key(s) matching cache:*"),
        "{outputs:#?}"
    );
    let mut left: Vec<String> = redis.cli(&["--scan"]).lines().map(str::to_owned).collect();
    left.sort();
    assert_eq!(left, ["cachet", "keep:config"]);

    let steps = plan_steps(&format!(
        "type = \"recipe\"\nrecipe = \"redis-flush\"\nwith = {{ socket = {:?}, all = true }}",
        redis.socket()
    ));
    let outputs = run_plan(&steps, &ctx("v2", "v1"), None).await;
    assert_all_ok(&outputs, &steps);
    support::poll_until(Duration::from_secs(10), || {
        redis.cli(&["DBSIZE"]).trim() == "0"
    })
    .await
    .expect("the database is empty");
}

// ---------------------------------------------------------------------------------------
// sqlite-restore

fn sqlite(db: &Path, sql: &str) -> String {
    run(Command::new(require("sqlite3", "sqlite3")).arg(db).arg(sql))
        .trim()
        .to_owned()
}

fn sqlite_fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = support::temp_dir();
    let db = dir.path().join("app.db");
    sqlite(
        &db,
        "CREATE TABLE t (a TEXT); WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5000) INSERT INTO t SELECT printf('row %d', x) FROM c;",
    );
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    sqlite(&db, &format!(".backup {}", backups.join("v1.db").display()));
    (dir, db, backups)
}

/// Overwrites bytes in the middle of a database file: a real corruption.
fn corrupt(file: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(4096)).unwrap();
    f.write_all(&[0xA5; 2048]).unwrap();
}

fn sqlite_recipe(db: &Path, backups: &Path) -> Vec<Step> {
    plan_steps(&format!(
        "type = \"recipe\"\nrecipe = \"sqlite-restore\"\nwith = {{ database = {:?}, backup = {:?} }}",
        db.display().to_string(),
        format!("{}/{{to_revision}}.db", backups.display()),
    ))
}

#[tokio::test]
async fn sqlite_restore_recipe_sets_the_corrupted_file_aside_and_restores_the_backup() {
    let (dir, db, backups) = sqlite_fixture();
    corrupt(&db);
    let corrupted = std::fs::read(&db).unwrap();
    let check = Command::new(require("sqlite3", "sqlite3"))
        .arg(&db)
        .arg("PRAGMA integrity_check")
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&check.stdout).trim(), "ok");

    let steps = sqlite_recipe(&db, &backups);
    let outputs = run_plan(&steps, &ctx("v2", "v1"), None).await;
    assert_all_ok(&outputs, &steps);
    assert_eq!(sqlite(&db, "PRAGMA integrity_check"), "ok");
    assert_eq!(sqlite(&db, "SELECT count(*) FROM t"), "5000");
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("app.db.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), corrupted);
}

#[tokio::test]
async fn sqlite_restore_recipe_refuses_a_corrupted_backup_and_changes_nothing() {
    let (dir, db, backups) = sqlite_fixture();
    corrupt(&backups.join("v1.db"));
    let before = std::fs::read(&db).unwrap();

    let steps = sqlite_recipe(&db, &backups);
    let outputs = run_plan(&steps, &ctx("v2", "v1"), None).await;
    assert!(!outputs[0].ok);
    assert!(
        outputs[0].output.contains("fails PRAGMA integrity_check"),
        "{outputs:#?}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

// ---------------------------------------------------------------------------------------
// migration downgrade with alembic

#[tokio::test]
async fn alembic_downgrade_recipe_takes_a_real_schema_down_and_checks_the_revision() {
    let alembic = require("alembic", "alembic");
    let dir = support::temp_dir();
    let d = dir.path();
    let db = d.join("app.db");
    std::fs::create_dir_all(d.join("migrations/versions")).unwrap();
    std::fs::write(
        d.join("alembic.ini"),
        format!(
            "[alembic]\nscript_location = {}\nsqlalchemy.url = sqlite:///{}\n",
            d.join("migrations").display(),
            db.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("migrations/env.py"),
        "from alembic import context\nfrom sqlalchemy import engine_from_config, pool\n\
         config = context.config\n\
         engine = engine_from_config(config.get_section(config.config_ini_section), prefix='sqlalchemy.', poolclass=pool.NullPool)\n\
         with engine.connect() as connection:\n    context.configure(connection=connection)\n    with context.begin_transaction():\n        context.run_migrations()\n",
    )
    .unwrap();
    std::fs::write(
        d.join("migrations/script.py.mako"),
        "# unused: the revisions are written by the test\n",
    )
    .unwrap();
    for (rev, down, table) in [("r1", "None", "orders"), ("r2", "'r1'", "refunds")] {
        std::fs::write(
            d.join(format!("migrations/versions/{rev}.py")),
            format!(
                "import sqlalchemy as sa\nfrom alembic import op\nrevision = '{rev}'\ndown_revision = {down}\n\
                 def upgrade():\n    op.create_table('{table}', sa.Column('id', sa.Integer, primary_key=True))\n\
                 def downgrade():\n    op.drop_table('{table}')\n"
            ),
        )
        .unwrap();
    }
    let ini = d.join("alembic.ini");
    run(Command::new(&alembic)
        .arg("-c")
        .arg(&ini)
        .args(["upgrade", "head"]));
    let tables = || {
        sqlite(
            &db,
            "SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name)",
        )
    };
    assert_eq!(tables(), "alembic_version,orders,refunds");

    let steps = plan_steps(&format!(
        "type = \"recipe\"\nrecipe = \"alembic-downgrade\"\nwith = {{ config = {:?}, to = \"r1\" }}",
        ini.display().to_string()
    ));
    assert_eq!(steps.len(), 2);
    let outputs = run_plan(&steps, &ctx("v2", "v1"), None).await;
    assert_all_ok(&outputs, &steps);
    assert_eq!(tables(), "alembic_version,orders");
    assert_eq!(sqlite(&db, "SELECT version_num FROM alembic_version"), "r1");

    // The check step fails when the database is not where `to` says.
    let steps = plan_steps(&format!(
        "type = \"recipe\"\nrecipe = \"alembic-downgrade\"\nwith = {{ config = {:?}, to = \"r2\" }}",
        ini.display().to_string()
    ));
    let check = &steps[1..];
    let outputs = run_plan(check, &ctx("v2", "v1"), None).await;
    assert!(!outputs[0].ok);
    assert!(
        outputs[0].output.contains("the database is at r1, not r2"),
        "{outputs:#?}"
    );

    // The generic recipe runs the tool's own command: one revision down by default.
    let steps = plan_steps(&format!(
        "type = \"recipe\"\nrecipe = \"migration-downgrade\"\nwith = {{ command = [{:?}, \"-c\", {:?}, \"downgrade\", \"-1\"], cwd = {:?} }}",
        alembic.display().to_string(),
        ini.display().to_string(),
        d.display().to_string()
    ));
    let outputs = run_plan(&steps, &ctx("v2", "v1"), None).await;
    assert_all_ok(&outputs, &steps);
    assert_eq!(tables(), "alembic_version");
}

// ---------------------------------------------------------------------------------------
// Vendor CLIs: exact commands through recording stand-ins

/// A directory of stand-ins for vendor CLIs that record their argv (one argument a line,
/// then `--end--`) and the variables tests care about, and succeed.
struct StandIns {
    dir: tempfile::TempDir,
}

impl StandIns {
    fn new() -> StandIns {
        let dir = support::temp_dir();
        for program in ["docker", "pm2", "heroku", "aws", "az", "terraform"] {
            write_script(
                &dir.path().join(program),
                &format!(
                    "#!/bin/bash\n{{ printf '%s\\n' \"$(basename \"$0\")\" \"$@\"; [[ -n ${{SHOP_TAG-}} ]] && echo \"SHOP_TAG=$SHOP_TAG\"; echo --end--; }} >> {}\n",
                    dir.path().join("calls.log").display()
                ),
            );
        }
        StandIns { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Every recorded call, as its argv (and recorded variables).
    fn calls(&self) -> Vec<Vec<String>> {
        let log = std::fs::read_to_string(self.path().join("calls.log")).unwrap_or_default();
        log.split("--end--\n")
            .filter(|c| !c.is_empty())
            .map(|c| c.lines().map(str::to_owned).collect())
            .collect()
    }
}

async fn vendor_calls(step: &str, ctx: &ActionContext) -> Vec<Vec<String>> {
    let stand_ins = StandIns::new();
    let steps = plan_steps(step);
    let outputs = run_plan(&steps, ctx, Some(stand_ins.path())).await;
    assert_all_ok(&outputs, &steps);
    stand_ins.calls()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

#[tokio::test]
async fn docker_compose_recipe_runs_up_with_the_previous_tag() {
    let calls = vendor_calls(
        "type = \"recipe\"\nrecipe = \"docker-compose\"\nwith = { project_dir = \"/srv/shop\", tag_variable = \"SHOP_TAG\", services = [\"web\", \"worker\"] }",
        &ctx("2.4.0", "2.3.1"),
    )
    .await;
    assert_eq!(
        calls,
        [strings(&[
            "docker",
            "compose",
            "--project-directory",
            "/srv/shop",
            "up",
            "--detach",
            "--no-build",
            "--wait",
            "--",
            "web",
            "worker",
            "SHOP_TAG=2.3.1",
        ])]
    );
}

#[tokio::test]
async fn pm2_recipe_switches_the_release_and_restarts_with_its_ecosystem_file() {
    let releases = crate::releases::Releases::new();
    releases.deploy("v2");
    let current = releases.path().join("current").display().to_string();
    let calls = vendor_calls(
        &format!(
            "type = \"recipe\"\nrecipe = \"pm2\"\nwith = {{ current = {current:?}, env = \"production\" }}"
        ),
        &ctx("v2", "v1"),
    )
    .await;
    assert_eq!(releases.current(), "releases/v1");
    assert_eq!(
        calls,
        [strings(&[
            "pm2",
            "startOrRestart",
            &format!("{current}/ecosystem.config.js"),
            "--env",
            "production",
            "--update-env",
        ])]
    );
}

#[tokio::test]
async fn heroku_recipe_rolls_back_and_waits_for_the_dynos() {
    let calls = vendor_calls(
        "type = \"recipe\"\nrecipe = \"heroku\"\nwith = { app = \"shop-prod\" }",
        &ctx("v42", "v41"),
    )
    .await;
    assert_eq!(
        calls,
        [
            strings(&["heroku", "releases:rollback", "--app", "shop-prod"]),
            strings(&["heroku", "ps:wait", "--app", "shop-prod"]),
        ]
    );
    let calls = vendor_calls(
        "type = \"recipe\"\nrecipe = \"heroku\"\nwith = { app = \"shop-prod\", to_observed_revision = true }",
        &ctx("v42", "v41"),
    )
    .await;
    assert_eq!(
        calls[0],
        strings(&["heroku", "releases:rollback", "v41", "--app", "shop-prod"])
    );
}

#[tokio::test]
async fn aws_ecs_recipe_updates_the_service_to_the_previous_task_definition_and_waits() {
    let calls = vendor_calls(
        "type = \"recipe\"\nrecipe = \"aws-ecs\"\nwith = { cluster = \"prod\", service = \"shop\", region = \"eu-west-1\" }",
        &ctx("shop:8", "shop:7"),
    )
    .await;
    assert_eq!(
        calls,
        [
            strings(&[
                "aws",
                "ecs",
                "update-service",
                "--cluster",
                "prod",
                "--service",
                "shop",
                "--task-definition",
                "shop:7",
                "--region",
                "eu-west-1",
            ]),
            strings(&[
                "aws",
                "ecs",
                "wait",
                "services-stable",
                "--cluster",
                "prod",
                "--services",
                "shop",
                "--region",
                "eu-west-1",
            ]),
        ]
    );
}

#[tokio::test]
async fn azure_app_service_recipe_swaps_the_slots_back() {
    let calls = vendor_calls(
        "type = \"recipe\"\nrecipe = \"azure-app-service\"\nwith = { resource_group = \"rg-shop\", app = \"shop\" }",
        &ctx("v2", "v1"),
    )
    .await;
    assert_eq!(
        calls,
        [strings(&[
            "az",
            "webapp",
            "deployment",
            "slot",
            "swap",
            "--resource-group",
            "rg-shop",
            "--name",
            "shop",
            "--slot",
            "staging",
            "--target-slot",
            "production",
        ])]
    );
}

#[tokio::test]
async fn terraform_recipe_applies_the_previous_configuration() {
    let releases = crate::releases::Releases::new();
    releases.deploy("v2");
    let current = releases.path().join("current").display().to_string();
    let calls = vendor_calls(
        &format!(
            "type = \"recipe\"\nrecipe = \"terraform\"\nwith = {{ current = {current:?}, dir = \"{current}/infra\", var_file = \"/etc/shop/prod.tfvars\" }}"
        ),
        &ctx("v2", "v1"),
    )
    .await;
    assert_eq!(releases.current(), "releases/v1");
    let chdir = format!("-chdir={current}/infra");
    assert_eq!(
        calls,
        [
            strings(&["terraform", &chdir, "init", "-input=false", "-no-color"]),
            strings(&[
                "terraform",
                &chdir,
                "apply",
                "-input=false",
                "-auto-approve",
                "-no-color",
                "-lock-timeout=5m",
                "-var-file=/etc/shop/prod.tfvars",
            ]),
        ]
    );
}

// ---------------------------------------------------------------------------------------
// The command line

fn rearguard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rearguard"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn recipes_lists_every_shipped_recipe_and_shows_one_with_its_documentation() {
    let out = rearguard(&["recipes"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in rearguard::config::recipe::names() {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} missing from:\n{text}"
        );
    }
    let out = rearguard(&["recipes", "show", "postgres-restore"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "preconditions",
        "verifies",
        "cannot_undo",
        "tested",
        "[param.backup]",
    ] {
        assert!(text.contains(key), "{key} missing from:\n{text}");
    }
    let out = rearguard(&["recipes", "show", "postgress-restore"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no recipe is named \"postgress-restore\"")
    );
}

#[test]
fn check_reports_recipe_parameter_errors_with_their_path() {
    let dir = support::temp_dir();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"[[plan]]
name = "back"

[[plan.step]]
type = "exec"
command = ["/bin/true"]

[[plan.step]]
type = "recipe"
recipe = "redis-flush"
with = { patterns = ["cache:*"], all = true, prot = 6379 }

[[plan.step]]
type = "recipe"
recipe = "aws-ecs"
with = { cluster = "prod", service = "shop", task_definition = "shop:{to_revision}" }
"#,
    )
    .unwrap();
    let out = rearguard(&["check", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "plan[0].step[1].with.prot: recipe \"redis-flush\" has no parameter \"prot\""
        ),
        "{text}"
    );
    assert!(
        text.contains("plan[0].step[1].with: recipe \"redis-flush\" takes exactly one of patterns, all; patterns and all are set"),
        "{text}"
    );
    // A mistake that shows only in the expanded steps is reported under the step it is in.
    assert!(
        text.contains("plan[0].step[2].expanded[0].command[8]: placeholders are substituted only as whole arguments"),
        "{text}"
    );
}
