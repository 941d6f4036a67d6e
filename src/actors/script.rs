//! ScriptActor: runs the node's configured scripts for incoming messages.
//!
//! The config's `scripts` map names shell commands. A message (a `/send` from the local HTTP
//! API, or a message from a peer delivered by the node) asks for one by name with
//! [`RunScript`]; the actor answers with the script's exit code and captured output
//! ([`ScriptOutput`]) or a [`ScriptError`]. [`GetScriptStats`] reports how many scripts run
//! and wait, for the status report.
//!
//! Safety rules, which hold whatever a peer sends:
//! - The message only selects a script by name. Nothing from it reaches the shell's command
//!   line: the configured command runs as `sh -c <command>` (`cmd.exe /c <command>` on
//!   Windows). The sender, the message id and the script name reach the script only as the
//!   environment variables `MSGTIER_SOURCE`, `MSGTIER_MESSAGE_ID` (decimal) and
//!   `MSGTIER_SCRIPT`. Everything else is inherited from the node: its environment and its
//!   working directory. Stdin is `/dev/null` (`NUL`).
//! - Everything is bounded: at most `max_concurrent` scripts run at once, at most `max_queue`
//!   more wait in FIFO order and further requests fail at once with [`ScriptError::Busy`];
//!   each of stdout and stderr is kept up to `max_output_bytes` and the rest is read and
//!   dropped, so a chatty script never blocks on a full pipe; a script still running after
//!   `timeout_ms` is killed.
//! - On Unix each script runs in its own process group, and a timeout kills the whole group
//!   with SIGKILL, so `sh -c 'sleep 100 & sleep 100'` leaves nothing behind. The group is also
//!   killed if the actor stops while the script runs. A script that exits normally after
//!   starting a background process which closed or redirected its stdout and stderr (a
//!   launcher such as `open -a Safari`) leaves that process running, as it would from a
//!   terminal. On Windows only the shell itself is killed.
//!
//! The actor never blocks its thread: each script is a `tokio::process` child driven by a
//! future spawned in the actor's context, and each request is answered through a oneshot
//! channel when its script ends.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use actix::prelude::*;
use log::{debug, info, warn};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::{Config, MAX_SCRIPT_TIMEOUT_MS, MIN_SCRIPT_TIMEOUT_MS};

/// Size of one read from a script's stdout or stderr, in bytes. 8 KiB is the usual
/// buffered-reader size; a Linux pipe holds 64 KiB, so a few reads drain a full one.
const READ_CHUNK_BYTES: usize = 8 * 1024;

/// Longest part of an unknown script name shown in a log line, in characters. The name comes
/// from the message; 64 is the longest configured name worth recognising (the id limit) and
/// keeps a hostile name from flooding the log.
const LOG_NAME_MAX_CHARS: usize = 64;

/// The resource limits the actor enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptLimits {
    /// A script still running after this long is killed (its whole process group on Unix), in
    /// milliseconds. [`ScriptActor::new`] clamps it to the config's range (1 ms to one day).
    pub timeout_ms: u64,
    /// Scripts running at once; [`ScriptActor::new`] treats 0 as 1.
    pub max_concurrent: usize,
    /// Requests waiting for a free slot; beyond this a request fails with
    /// [`ScriptError::Busy`]. 0 means no waiting.
    pub max_queue: usize,
    /// Bytes kept of stdout, and separately of stderr; the rest is read and discarded.
    pub max_output_bytes: usize,
}

impl ScriptLimits {
    /// The limits from the config's `script_timeout_ms`, `max_concurrent_scripts`,
    /// `max_script_queue` and `max_script_output_bytes`.
    pub fn from_config(c: &Config) -> Self {
        ScriptLimits {
            timeout_ms: c.script_timeout_ms,
            max_concurrent: c.max_concurrent_scripts,
            max_queue: c.max_script_queue,
            max_output_bytes: c.max_script_output_bytes,
        }
    }
}

/// Run the configured script `name` for a message from `source`.
///
/// Answered when the script ends (or at once when it is unknown or the queue is full). A
/// request that had to wait in the queue starts when an earlier script finishes.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<ScriptOutput, ScriptError>")]
pub struct RunScript {
    /// The script's name in the config's `scripts` map; only ever used as a lookup key.
    pub name: String,
    /// The id of the node the message came from; given to the script as `MSGTIER_SOURCE`.
    pub source: String,
    /// The message's id; given to the script as `MSGTIER_MESSAGE_ID`, in decimal.
    pub message_id: u64,
}

/// How a script ended and what it printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptOutput {
    /// The exit code; `None` when the script was killed by a signal, including the kill on
    /// timeout.
    pub exit_code: Option<i32>,
    /// Stdout, up to `max_output_bytes`.
    pub stdout: Vec<u8>,
    /// Stderr, up to `max_output_bytes`.
    pub stderr: Vec<u8>,
    /// The script ran past `timeout_ms` and was killed; the output is what it printed before.
    pub timed_out: bool,
    /// Stdout went past `max_output_bytes`; the rest was discarded.
    pub stdout_truncated: bool,
    /// Stderr went past `max_output_bytes`; the rest was discarded.
    pub stderr_truncated: bool,
    /// From the start of the process to its end (time spent queued not included), in
    /// milliseconds.
    pub duration_ms: u64,
}

/// Why a script did not run to an end. A timeout is not an error: it is a [`ScriptOutput`]
/// with `timed_out` set.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// No script of that name is configured. Holds the requested name.
    #[error("no script named {0:?}")]
    UnknownScript(String),
    /// Every slot is running and the queue is full; try again later.
    #[error("too many scripts running or waiting; try again later")]
    Busy,
    /// The shell could not be started (not found, out of processes, ...).
    #[error("cannot start the script's shell: {0}")]
    Spawn(#[source] io::Error),
    /// Reading the script's stdout or stderr failed; the script was killed.
    #[error("cannot read the script's output: {0}")]
    Output(#[source] io::Error),
    /// Waiting for the script's exit status failed; the script was killed.
    #[error("cannot wait for the script: {0}")]
    Wait(#[source] io::Error),
    /// The actor stopped before the script finished (the node is shutting down).
    #[error("the script runner stopped before the script finished")]
    Stopped,
}

/// Asks how many scripts are running and waiting.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ScriptStats")]
pub struct GetScriptStats;

/// Scripts running and waiting right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, MessageResponse)]
pub struct ScriptStats {
    /// Scripts whose process is running (at most `max_concurrent`).
    pub running: usize,
    /// Requests waiting for a free slot (at most `max_queue`).
    pub queued: usize,
}

/// A request admitted to run, now or when a slot frees up.
struct Job {
    request: RunScript,
    command: String,
    reply: oneshot::Sender<Result<ScriptOutput, ScriptError>>,
}

/// See the module docs.
pub struct ScriptActor {
    scripts: BTreeMap<String, String>,
    limits: ScriptLimits,
    running: usize,
    queue: VecDeque<Job>,
}

impl ScriptActor {
    /// An actor running the commands in `scripts` (name -> shell command) within `limits`.
    /// `timeout_ms` is clamped to the config's range and `max_concurrent` 0 counts as 1, so
    /// hand-built limits cannot stall every request or overflow a deadline.
    pub fn new(scripts: BTreeMap<String, String>, limits: ScriptLimits) -> Self {
        let limits = ScriptLimits {
            timeout_ms: limits
                .timeout_ms
                .clamp(MIN_SCRIPT_TIMEOUT_MS, MAX_SCRIPT_TIMEOUT_MS),
            max_concurrent: limits.max_concurrent.max(1),
            ..limits
        };
        ScriptActor {
            scripts,
            limits,
            running: 0,
            queue: VecDeque::new(),
        }
    }

    /// Whether a script of this name is configured.
    pub fn is_script(&self, name: &str) -> bool {
        self.scripts.contains_key(name)
    }

    /// The limits in force (after [`ScriptActor::new`]'s clamping).
    pub fn limits(&self) -> ScriptLimits {
        self.limits
    }

    /// Looks the script up and starts it, queues it, or refuses it. On success the receiver
    /// gets the answer when the script ends.
    fn admit(
        &mut self,
        request: RunScript,
        ctx: &mut Context<Self>,
    ) -> Result<oneshot::Receiver<Result<ScriptOutput, ScriptError>>, ScriptError> {
        let Some(command) = self.scripts.get(&request.name).cloned() else {
            debug!(
                "unknown script {} requested by {:?} (message {})",
                shown_name(&request.name),
                request.source,
                request.message_id
            );
            return Err(ScriptError::UnknownScript(request.name));
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request,
            command,
            reply,
        };
        if self.running < self.limits.max_concurrent {
            self.start(job, ctx);
        } else if self.queue.len() < self.limits.max_queue {
            debug!(
                "script {:?} for {:?} (message {}) waits for a slot ({} running, {} queued)",
                job.request.name,
                job.request.source,
                job.request.message_id,
                self.running,
                self.queue.len()
            );
            self.queue.push_back(job);
        } else {
            info!(
                "script {:?} for {:?} (message {}) refused: {} running, {} queued",
                job.request.name,
                job.request.source,
                job.request.message_id,
                self.running,
                self.queue.len()
            );
            return Err(ScriptError::Busy);
        }
        Ok(answer)
    }

    /// Runs `job` in a new slot; when it ends, answers it and starts the next queued job.
    fn start(&mut self, job: Job, ctx: &mut Context<Self>) {
        self.running += 1;
        let Job {
            request,
            command,
            reply,
        } = job;
        let run = run_script(request, command, self.limits);
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(run).map(move |result, act, ctx| {
                act.running = act.running.saturating_sub(1);
                // The requester may have given up; the script ran anyway.
                let _ = reply.send(result);
                act.start_queued(ctx);
            }),
        );
    }

    /// Starts queued jobs, oldest first, while slots are free.
    fn start_queued(&mut self, ctx: &mut Context<Self>) {
        while self.running < self.limits.max_concurrent {
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            self.start(job, ctx);
        }
    }
}

impl Actor for ScriptActor {
    type Context = Context<Self>;
}

impl Handler<RunScript> for ScriptActor {
    type Result = ResponseFuture<Result<ScriptOutput, ScriptError>>;

    fn handle(&mut self, msg: RunScript, ctx: &mut Self::Context) -> Self::Result {
        let admitted = self.admit(msg, ctx);
        Box::pin(async move {
            match admitted {
                // A dropped sender means the actor stopped with the job queued or running.
                Ok(answer) => answer.await.unwrap_or(Err(ScriptError::Stopped)),
                Err(e) => Err(e),
            }
        })
    }
}

/// A config reload: new scripts and limits, for requests admitted from now on (running and
/// queued ones keep what they were admitted with).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Reconfigure {
    pub scripts: BTreeMap<String, String>,
    pub limits: ScriptLimits,
}

impl Handler<Reconfigure> for ScriptActor {
    type Result = ();

    fn handle(&mut self, msg: Reconfigure, ctx: &mut Self::Context) {
        let fresh = ScriptActor::new(msg.scripts, msg.limits);
        self.scripts = fresh.scripts;
        self.limits = fresh.limits;
        // More slots may start waiting requests at once.
        self.start_queued(ctx);
    }
}

impl Handler<GetScriptStats> for ScriptActor {
    type Result = ScriptStats;

    fn handle(&mut self, _: GetScriptStats, _: &mut Self::Context) -> ScriptStats {
        ScriptStats {
            running: self.running,
            queued: self.queue.len(),
        }
    }
}

/// A name from a message, quoted and shortened for a log line.
fn shown_name(name: &str) -> String {
    if name.chars().count() <= LOG_NAME_MAX_CHARS {
        format!("{name:?}")
    } else {
        let head: String = name.chars().take(LOG_NAME_MAX_CHARS).collect();
        format!("{head:?}...")
    }
}

/// `sh -c <command>` in a new process group.
#[cfg(unix)]
fn shell_command(command: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).process_group(0);
    cmd
}

/// `cmd.exe /c <command>`; the command is appended as it is written in the config, as
/// `system()` would, instead of being re-quoted as a single argument.
#[cfg(windows)]
fn shell_command(command: &str) -> Command {
    let mut cmd = Command::new("cmd.exe");
    cmd.arg("/c").raw_arg(command);
    cmd
}

#[cfg(not(any(unix, windows)))]
compile_error!("scripts need a Unix shell or cmd.exe");

/// Kills a script's process group, and does so when dropped unless disarmed.
///
/// It is disarmed once the group's leader (the shell) has been reaped: only until then is the
/// group id certain not to have been handed to another process.
struct GroupKiller {
    #[cfg(unix)]
    pgid: Option<libc::pid_t>,
}

impl GroupKiller {
    /// For a child started by [`shell_command`], whose pid is its process group id.
    fn new(child: &Child) -> Self {
        #[cfg(unix)]
        {
            GroupKiller {
                // Never 0 or 1 (killpg(0) would hit the node's own group); a running child
                // always has a pid above 1.
                pgid: child
                    .id()
                    .and_then(|id| libc::pid_t::try_from(id).ok())
                    .filter(|&pgid| pgid > 1),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = child;
            GroupKiller {}
        }
    }

    /// Sends SIGKILL to the whole group (no-op off Unix, or once disarmed).
    fn kill(&self) {
        #[cfg(unix)]
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg takes plain integers and touches no memory of ours. `pgid` is the
            // group of a child that has not been reaped yet, so it still names that group.
            let rc = unsafe { libc::killpg(pgid, libc::SIGKILL) };
            if rc != 0 {
                // ESRCH: the group is already empty.
                debug!("killpg({pgid}): {}", io::Error::last_os_error());
            }
        }
    }

    /// The leader has been reaped: never signal the group id again.
    fn disarm(&mut self) {
        #[cfg(unix)]
        {
            self.pgid = None;
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One output stream of a script: the bytes kept and whether more came.
struct Capture {
    kept: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Capture {
    fn new(cap: usize) -> Self {
        Capture {
            kept: Vec::new(),
            cap,
            truncated: false,
        }
    }

    /// Reads `pipe` to its end, keeping the first `cap` bytes and discarding the rest.
    async fn drain<R: AsyncRead + Unpin>(&mut self, pipe: Option<&mut R>) -> io::Result<()> {
        let Some(pipe) = pipe else {
            return Ok(());
        };
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            let n = match pipe.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let keep = n.min(self.cap.saturating_sub(self.kept.len()));
            self.kept.extend_from_slice(&chunk[..keep]);
            if keep < n {
                self.truncated = true;
            }
        }
    }
}

/// How the wait for a script ended.
enum Ending {
    Exited(ExitStatus),
    TimedOut,
    Failed(ScriptError),
}

/// Runs one script to its end or its timeout and logs the result.
async fn run_script(
    request: RunScript,
    command: String,
    limits: ScriptLimits,
) -> Result<ScriptOutput, ScriptError> {
    let RunScript {
        name,
        source,
        message_id,
    } = request;
    let mut cmd = shell_command(&command);
    cmd.env("MSGTIER_SOURCE", &source)
        .env("MSGTIER_MESSAGE_ID", message_id.to_string())
        .env("MSGTIER_SCRIPT", &name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Backstop for the shell itself should this future be dropped unfinished.
        .kill_on_drop(true);

    let started = Instant::now();
    let deadline = started + Duration::from_millis(limits.timeout_ms);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            warn!("script {name:?} for {source:?} (message {message_id}) did not start: {e}");
            return Err(ScriptError::Spawn(e));
        }
    };
    // Declared after `child`, so dropped first: the group is killed while the leader is
    // still unreaped.
    let mut group = GroupKiller::new(&child);
    let mut stdout_pipe = child.stdout.take();
    let mut stderr_pipe = child.stderr.take();
    let mut stdout = Capture::new(limits.max_output_bytes);
    let mut stderr = Capture::new(limits.max_output_bytes);

    // Read both streams to their end first and only then reap the shell, so that the group
    // id stays valid for as long as a kill may be needed.
    let read = tokio::time::timeout_at(deadline, async {
        let (out, err) = tokio::join!(
            stdout.drain(stdout_pipe.as_mut()),
            stderr.drain(stderr_pipe.as_mut())
        );
        out.and(err)
    })
    .await;
    let ending = match read {
        Err(_) => Ending::TimedOut,
        Ok(Err(e)) => Ending::Failed(ScriptError::Output(e)),
        Ok(Ok(())) => match tokio::time::timeout_at(deadline, child.wait()).await {
            Err(_) => Ending::TimedOut,
            Ok(Err(e)) => Ending::Failed(ScriptError::Wait(e)),
            Ok(Ok(status)) => {
                group.disarm();
                Ending::Exited(status)
            }
        },
    };
    drop((stdout_pipe, stderr_pipe));
    if !matches!(ending, Ending::Exited(_)) {
        group.kill();
        // The shell is in the group; this covers a group that could not be signalled.
        let _ = child.start_kill();
        if let Err(e) = child.wait().await {
            debug!("script {name:?}: reaping the killed shell: {e}");
        }
        group.disarm();
    }
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

    let (exit_code, timed_out) = match ending {
        Ending::Exited(status) => {
            info!(
                "script {name:?} for {source:?} (message {message_id}) {} in {duration_ms} ms",
                describe(status)
            );
            (status.code(), false)
        }
        Ending::TimedOut => {
            warn!(
                "script {name:?} for {source:?} (message {message_id}) timed out after {duration_ms} ms (limit {} ms); killed",
                limits.timeout_ms
            );
            (None, true)
        }
        Ending::Failed(e) => {
            warn!("script {name:?} for {source:?} (message {message_id}) failed after {duration_ms} ms: {e}; killed");
            return Err(e);
        }
    };
    Ok(ScriptOutput {
        exit_code,
        stdout: stdout.kept,
        stderr: stderr.kept,
        timed_out,
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
        duration_ms,
    })
}

/// `exited with code 3`, `was killed by signal 9`, for the log.
fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    format!("ended ({status})")
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    use std::path::Path;

    /// Upper bound of every poll in these tests, in milliseconds: far above what any step takes
    /// on a loaded CI machine, so only a real failure reaches it.
    const POLL_LIMIT_MS: u64 = 10_000;

    /// Interval between two looks of a poll, in milliseconds.
    const POLL_STEP_MS: u64 = 10;

    fn limits() -> ScriptLimits {
        ScriptLimits {
            timeout_ms: 10_000,
            max_concurrent: 4,
            max_queue: 4,
            max_output_bytes: 64 * 1024,
        }
    }

    fn actor(scripts: &[(&str, String)], limits: ScriptLimits) -> Addr<ScriptActor> {
        let scripts = scripts
            .iter()
            .map(|(name, command)| (name.to_string(), command.clone()))
            .collect();
        ScriptActor::new(scripts, limits).start()
    }

    fn request(name: &str, message_id: u64) -> RunScript {
        RunScript {
            name: name.to_string(),
            source: "node-7".to_string(),
            message_id,
        }
    }

    async fn run(addr: &Addr<ScriptActor>, name: &str) -> Result<ScriptOutput, ScriptError> {
        addr.send(request(name, 1)).await.expect("actor alive")
    }

    /// A path quoted for a shell command (test paths hold no single quote).
    fn quoted(path: &Path) -> String {
        let s = path.to_str().expect("utf-8 temp path");
        assert!(!s.contains('\''));
        format!("'{s}'")
    }

    /// Polls `done` until it holds, failing the test after [`POLL_LIMIT_MS`].
    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let limit = Instant::now() + Duration::from_millis(POLL_LIMIT_MS);
        while !done() {
            assert!(Instant::now() < limit, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(POLL_STEP_MS)).await;
        }
    }

    /// Whether `pid` is gone: no such process, or (Linux) a zombie waiting for its new parent
    /// to reap it, which no longer runs anything.
    fn process_gone(pid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks that the process exists; nothing is sent.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        }
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat.rsplit_once(") ")?.1.chars().next()?;
                Some(state == 'Z' || state == 'X')
            })
            .unwrap_or(false)
    }

    fn read_pid(path: &Path) -> libc::pid_t {
        let text = std::fs::read_to_string(path).expect("pid file");
        text.trim().parse().expect("a pid")
    }

    #[actix::test]
    async fn captures_stdout_stderr_and_exit_code() {
        let addr = actor(
            &[("greet", "echo hi; echo oops >&2; exit 3".to_string())],
            limits(),
        );
        let out = run(&addr, "greet").await.expect("script runs");
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"oops\n");
        assert!(!out.timed_out && !out.stdout_truncated && !out.stderr_truncated);
        assert!(out.duration_ms < POLL_LIMIT_MS);

        // Killed by a signal: no exit code, and not a timeout.
        let addr = actor(&[("die", "kill -9 $$".to_string())], limits());
        let out = run(&addr, "die").await.expect("script runs");
        assert_eq!(out.exit_code, None);
        assert!(!out.timed_out);
    }

    #[actix::test]
    async fn environment_cwd_and_stdin() {
        let addr = actor(
            &[
                (
                    "env",
                    "echo $MSGTIER_SOURCE $MSGTIER_MESSAGE_ID $MSGTIER_SCRIPT".to_string(),
                ),
                ("cwd", "pwd".to_string()),
                ("stdin", "cat; echo eof".to_string()),
            ],
            limits(),
        );
        let out = addr
            .send(RunScript {
                name: "env".into(),
                source: "node-7".into(),
                message_id: 18_446_744_073_709_551_615,
            })
            .await
            .expect("actor alive")
            .expect("script runs");
        assert_eq!(out.stdout, b"node-7 18446744073709551615 env\n");
        assert_eq!(out.exit_code, Some(0));

        let out = run(&addr, "cwd").await.expect("script runs");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(
            std::fs::canonicalize(String::from_utf8_lossy(out.stdout.trim_ascii()).as_ref()).ok(),
            std::fs::canonicalize(cwd).ok()
        );

        // Stdin is /dev/null: `cat` ends at once.
        let out = run(&addr, "stdin").await.expect("script runs");
        assert_eq!(out.stdout, b"eof\n");
    }

    #[actix::test]
    async fn unknown_script() {
        let scripts = BTreeMap::from([("hello".to_string(), "echo hello".to_string())]);
        let actor = ScriptActor::new(scripts, limits());
        assert!(actor.is_script("hello"));
        assert!(!actor.is_script("Hello"));
        let addr = actor.start();
        match run(&addr, "nope").await {
            Err(ScriptError::UnknownScript(name)) => assert_eq!(name, "nope"),
            other => panic!("expected UnknownScript, got {other:?}"),
        }
        assert_eq!(
            ScriptError::UnknownScript("nope".into()).to_string(),
            r#"no script named "nope""#
        );
    }

    #[actix::test]
    async fn message_text_is_never_given_to_the_shell() {
        let dir = tempfile::tempdir().expect("temp dir");
        let by_name = dir.path().join("by-name");
        let by_source = dir.path().join("by-source");
        let addr = actor(
            &[
                ("chrome", "echo chrome".to_string()),
                ("whoami", r#"printf %s "$MSGTIER_SOURCE""#.to_string()),
            ],
            limits(),
        );
        for name in [
            format!("chrome; touch {}", quoted(&by_name)),
            format!("chrome && touch {}", quoted(&by_name)),
            format!("$(touch {})", quoted(&by_name)),
            format!("chrome`touch {}`", quoted(&by_name)),
        ] {
            match run(&addr, &name).await {
                Err(ScriptError::UnknownScript(n)) => assert_eq!(n, name),
                other => panic!("expected UnknownScript for {name:?}, got {other:?}"),
            }
        }
        // The sender id reaches the script as data only.
        let source = format!(
            "$(touch {}); `touch {}`",
            quoted(&by_source),
            quoted(&by_source)
        );
        let out = addr
            .send(RunScript {
                name: "whoami".into(),
                source: source.clone(),
                message_id: 2,
            })
            .await
            .expect("actor alive")
            .expect("script runs");
        assert_eq!(out.stdout, source.as_bytes());
        assert!(!by_name.exists());
        assert!(!by_source.exists());
    }

    #[actix::test]
    async fn timeout_kills_the_process_group() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bg_pid = dir.path().join("bg.pid");
        let sh_pid = dir.path().join("sh.pid");
        let command = format!(
            "echo $$ > {sh}; sleep 100 & echo $! > {bg}; echo started; sleep 100",
            sh = quoted(&sh_pid),
            bg = quoted(&bg_pid)
        );
        let addr = actor(
            &[("hang", command)],
            ScriptLimits {
                timeout_ms: 1_000,
                ..limits()
            },
        );
        let out = run(&addr, "hang").await.expect("script runs");
        assert!(out.timed_out);
        assert_eq!(out.exit_code, None);
        assert!(out.duration_ms >= 1_000, "{}", out.duration_ms);
        // What it printed before the timeout is kept.
        assert_eq!(out.stdout, b"started\n");
        let pids = [read_pid(&sh_pid), read_pid(&bg_pid)];
        wait_until("the script's processes to be gone", || {
            pids.iter().all(|&pid| process_gone(pid))
        })
        .await;
        assert_eq!(
            addr.send(GetScriptStats).await.expect("actor alive"),
            ScriptStats::default()
        );
    }

    #[actix::test]
    async fn output_over_the_cap_is_truncated_and_drained() {
        let addr = actor(
            &[
                // Far more than a pipe holds: finishes only if both pipes are drained.
                (
                    "big",
                    "head -c 300000 /dev/zero; head -c 200000 /dev/zero >&2; echo done >&2"
                        .to_string(),
                ),
                ("exact", "head -c 1024 /dev/zero".to_string()),
            ],
            ScriptLimits {
                max_output_bytes: 1024,
                ..limits()
            },
        );
        let out = run(&addr, "big").await.expect("script runs");
        assert_eq!(out.exit_code, Some(0));
        assert!(!out.timed_out);
        assert_eq!(out.stdout, vec![0u8; 1024]);
        assert_eq!(out.stderr, vec![0u8; 1024]);
        assert!(out.stdout_truncated && out.stderr_truncated);

        let out = run(&addr, "exact").await.expect("script runs");
        assert_eq!(out.stdout.len(), 1024);
        assert!(!out.stdout_truncated && !out.stderr_truncated);
    }

    #[actix::test]
    async fn concurrency_limit_queue_and_busy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let gate = dir.path().join("gate");
        let marker = |id: u64| dir.path().join(format!("started.{id}"));
        // Marks that it started, then blocks until the test creates the gate file.
        let command = format!(
            "touch {dir}/started.$MSGTIER_MESSAGE_ID; until [ -e {gate} ]; do sleep 0.01; done; echo done",
            dir = quoted(dir.path()),
            gate = quoted(&gate)
        );
        let addr = actor(
            &[("block", command)],
            ScriptLimits {
                max_concurrent: 2,
                max_queue: 1,
                ..limits()
            },
        );
        // Sent in this order, handled in this order.
        let first = addr.send(request("block", 1));
        let second = addr.send(request("block", 2));
        let third = addr.send(request("block", 3));
        let fourth = addr.send(request("block", 4));

        match fourth.await.expect("actor alive") {
            Err(ScriptError::Busy) => {}
            other => panic!("expected Busy, got {other:?}"),
        }
        wait_until("two scripts to start", || {
            marker(1).exists() && marker(2).exists()
        })
        .await;
        let stats = addr.send(GetScriptStats).await.expect("actor alive");
        assert_eq!(
            stats,
            ScriptStats {
                running: 2,
                queued: 1
            }
        );
        assert!(!marker(3).exists(), "the queued script must not run yet");

        std::fs::write(&gate, b"").expect("create gate");
        for (id, pending) in [(1, first), (2, second), (3, third)] {
            let out = pending
                .await
                .expect("actor alive")
                .unwrap_or_else(|e| panic!("request {id}: {e}"));
            assert_eq!(out.exit_code, Some(0), "request {id}");
            assert_eq!(out.stdout, b"done\n", "request {id}");
        }
        assert!(marker(3).exists());
        assert!(!marker(4).exists());
        assert_eq!(
            addr.send(GetScriptStats).await.expect("actor alive"),
            ScriptStats::default()
        );
    }

    #[test]
    fn limits_from_config_and_clamping() {
        let text = r#"{"id": "n1", "secret": "x", "script_timeout_ms": 5, "max_concurrent_scripts": 3, "max_script_queue": 0, "max_script_output_bytes": 2048}"#;
        let config = crate::config::parse("node.json", text, Path::new("/"))
            .expect("valid config")
            .config;
        let limits = ScriptLimits::from_config(&config);
        assert_eq!(
            limits,
            ScriptLimits {
                timeout_ms: 5,
                max_concurrent: 3,
                max_queue: 0,
                max_output_bytes: 2048
            }
        );
        let clamped = ScriptActor::new(
            BTreeMap::new(),
            ScriptLimits {
                timeout_ms: u64::MAX,
                max_concurrent: 0,
                ..limits
            },
        )
        .limits();
        assert_eq!(clamped.timeout_ms, MAX_SCRIPT_TIMEOUT_MS);
        assert_eq!(clamped.max_concurrent, 1);
    }
}
