//! A client for one running kernel: the shell, iopub, control, stdin and heartbeat sockets, with
//! replies matched to their requests by `parent_header.msg_id` (never "the next message") and
//! iopub messages routed to the request that caused them. Every message is signed and every
//! incoming signature verified; a message with a bad signature is dropped and logged. It
//! speaks ZeroMQ over TCP or over IPC (socket files), as the connection info says, and knows
//! nothing about containers or sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jupyter_protocol::{
    CompleteRequest, ConnectionInfo, ExecuteRequest, InputReply, InspectRequest, InterruptRequest,
    JupyterMessage, JupyterMessageContent, KernelInfoReply, KernelInfoRequest, Transport,
};
use jupyter_zmq_client::{
    ClientHeartbeatConnection, DealerRecvConnection, DealerSendConnection, RuntimeError,
    create_client_control_connection, create_client_heartbeat_connection,
    create_client_iopub_connection, create_client_shell_connection_with_identity,
    create_client_stdin_connection_with_identity, peer_identity_for_session,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often readiness probes are sent while a kernel starts.
const READY_PROBE_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("could not open the kernel's {channel} channel at {endpoint}: {source}")]
    Connect {
        channel: &'static str,
        endpoint: String,
        #[source]
        source: RuntimeError,
    },
    #[error(
        "the kernel's {channel} channel at {endpoint} did not accept connections within {waited:?}"
    )]
    Unreachable {
        channel: &'static str,
        endpoint: String,
        waited: Duration,
    },
    #[error("sending {msg_type} to the kernel failed: {source}")]
    Send {
        msg_type: String,
        #[source]
        source: RuntimeError,
    },
    #[error("the kernel did not answer {msg_type} within {timeout:?}")]
    NoReply { msg_type: String, timeout: Duration },
    #[error(
        "the kernel was not ready within {waited:?} (kernel_info_reply seen: {shell_ready}, iopub message seen: {iopub_ready})"
    )]
    NotReady {
        waited: Duration,
        shell_ready: bool,
        iopub_ready: bool,
    },
}

/// Where replies and iopub messages go, keyed by the msg_id of the request they answer.
#[derive(Default)]
struct Routes {
    replies: Mutex<HashMap<String, oneshot::Sender<JupyterMessage>>>,
    iopub: Mutex<HashMap<String, mpsc::UnboundedSender<JupyterMessage>>>,
}

impl Routes {
    fn deliver_reply(&self, message: JupyterMessage) {
        let Some(parent) = message.parent_header.as_ref().map(|h| h.msg_id.clone()) else {
            tracing::debug!(
                msg_type = message.message_type(),
                "reply without parent dropped"
            );
            return;
        };
        let waiter = self.replies.lock().expect("routes lock").remove(&parent);
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(message);
            }
            None => tracing::debug!(
                msg_type = message.message_type(),
                parent = %parent,
                "stale reply dropped"
            ),
        }
    }

    fn deliver_iopub(&self, message: JupyterMessage) {
        let Some(parent) = message.parent_header.as_ref().map(|h| h.msg_id.clone()) else {
            return;
        };
        let routes = self.iopub.lock().expect("routes lock");
        if let Some(route) = routes.get(&parent) {
            let _ = route.send(message);
        }
    }
}

/// The output of one `execute_request` as it arrives. Dropping it stops the routing.
pub struct ExecutionHandle {
    pub msg_id: String,
    pub iopub: mpsc::UnboundedReceiver<JupyterMessage>,
    pub reply: oneshot::Receiver<JupyterMessage>,
    routes: Arc<Routes>,
}

impl Drop for ExecutionHandle {
    fn drop(&mut self) {
        self.routes
            .iopub
            .lock()
            .expect("routes lock")
            .remove(&self.msg_id);
        self.routes
            .replies
            .lock()
            .expect("routes lock")
            .remove(&self.msg_id);
    }
}

/// A connected client of one kernel. Dropping it closes its sockets and stops its readers.
pub struct KernelClient {
    info: ConnectionInfo,
    /// The Jupyter session (the shell's ZeroMQ identity derives from it), kept to reopen a
    /// dropped channel.
    session: String,
    shell: tokio::sync::Mutex<DealerSendConnection>,
    control: tokio::sync::Mutex<DealerSendConnection>,
    heartbeat: tokio::sync::Mutex<Option<ClientHeartbeatConnection>>,
    routes: Arc<Routes>,
    iopub_seen: watch::Receiver<u64>,
    /// Stops this client's socket readers: cancelled when the client is dropped, and with the
    /// server's shutdown token it derives from.
    cancel: CancellationToken,
    /// Where the socket readers run, so shutdown waits for them.
    readers: TaskTracker,
}

/// Where a client's socket readers run: on the server's task tracker, stopped by its shutdown
/// token as well as by dropping the client.
#[derive(Clone)]
pub struct ReaderTasks {
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Drop for KernelClient {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl KernelClient {
    /// Opens all five channels of the kernel described by `info`, waiting up to `timeout` for
    /// its ports to accept connections. The returned client is connected, not yet known ready:
    /// call [`KernelClient::wait_ready`]. Its socket readers run on `readers`.
    pub async fn connect(
        info: ConnectionInfo,
        timeout: Duration,
        readers: &ReaderTasks,
    ) -> Result<Self, KernelError> {
        let started = Instant::now();
        wait_for_listener("shell", &info, info.shell_port, timeout).await?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shell channel listening"
        );
        let session = uuid::Uuid::new_v4().to_string();
        let identity =
            peer_identity_for_session(&session).map_err(|source| KernelError::Connect {
                channel: "shell",
                endpoint: info.shell_url(),
                source,
            })?;
        let connect_error = |channel: &'static str, endpoint: String| {
            move |source| KernelError::Connect {
                channel,
                endpoint,
                source,
            }
        };
        let within = |channel: &'static str, endpoint: String| {
            move |_| KernelError::Unreachable {
                channel,
                endpoint,
                waited: timeout,
            }
        };

        let iopub =
            tokio::time::timeout(timeout, create_client_iopub_connection(&info, "", &session))
                .await
                .map_err(within("iopub", info.iopub_url()))?
                .map_err(connect_error("iopub", info.iopub_url()))?;
        let shell = tokio::time::timeout(
            timeout,
            create_client_shell_connection_with_identity(&info, &session, identity.clone()),
        )
        .await
        .map_err(within("shell", info.shell_url()))?
        .map_err(connect_error("shell", info.shell_url()))?;
        let stdin = tokio::time::timeout(
            timeout,
            create_client_stdin_connection_with_identity(&info, &session, identity),
        )
        .await
        .map_err(within("stdin", info.stdin_url()))?
        .map_err(connect_error("stdin", info.stdin_url()))?;
        let control =
            tokio::time::timeout(timeout, create_client_control_connection(&info, &session))
                .await
                .map_err(within("control", info.control_url()))?
                .map_err(connect_error("control", info.control_url()))?;

        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "all channels connected"
        );
        let cancel = readers.shutdown.child_token();
        let tracker = &readers.tracker;
        let routes = Arc::new(Routes::default());
        let (iopub_seen_tx, iopub_seen) = watch::channel(0u64);

        let (shell_send, shell_recv) = shell.split();
        let (control_send, control_recv) = control.split();
        let (stdin_send, stdin_recv) = stdin.split();
        spawn_reply_reader(tracker, "shell", shell_recv, routes.clone(), cancel.clone());
        spawn_reply_reader(
            tracker,
            "control",
            control_recv,
            routes.clone(),
            cancel.clone(),
        );
        spawn_stdin_responder(tracker, stdin_send, stdin_recv, cancel.clone());
        spawn_iopub_reader(
            tracker,
            iopub,
            routes.clone(),
            iopub_seen_tx,
            cancel.clone(),
        );

        Ok(Self {
            info,
            session,
            shell: tokio::sync::Mutex::new(shell_send),
            control: tokio::sync::Mutex::new(control_send),
            heartbeat: tokio::sync::Mutex::new(None),
            routes,
            iopub_seen,
            cancel,
            readers: tracker.clone(),
        })
    }

    /// Waits until the kernel answered `kernel_info_request` on shell AND at least one iopub
    /// message arrived, so no output of the first cell can be lost. Probes are resent until
    /// both hold; late replies to earlier probes are dropped by msg_id matching.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<KernelInfoReply, KernelError> {
        let started = Instant::now();
        let mut info_reply: Option<KernelInfoReply> = None;
        loop {
            let iopub_ready = *self.iopub_seen.borrow() > 0;
            if let (Some(reply), true) = (&info_reply, iopub_ready) {
                return Ok(reply.clone());
            }
            let remaining = timeout.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(KernelError::NotReady {
                    waited: timeout,
                    shell_ready: info_reply.is_some(),
                    iopub_ready,
                });
            }
            let probe = JupyterMessage::new(KernelInfoRequest {}, None);
            match self
                .request_on_shell(probe, READY_PROBE_INTERVAL.min(remaining))
                .await
            {
                Ok(reply) => {
                    tracing::debug!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "kernel_info_reply"
                    );
                    if let JupyterMessageContent::KernelInfoReply(reply) = reply.content {
                        info_reply = Some(*reply);
                    }
                    if *self.iopub_seen.borrow() == 0 {
                        let mut seen = self.iopub_seen.clone();
                        let _ = tokio::time::timeout(
                            READY_PROBE_INTERVAL.min(remaining),
                            seen.wait_for(|count| *count > 0),
                        )
                        .await;
                    }
                }
                Err(KernelError::NoReply { .. }) => {}
                Err(other) => return Err(other),
            }
        }
    }

    /// Sends `kernel_info_request` and returns how long the reply took.
    pub async fn kernel_info(&self, timeout: Duration) -> Result<Duration, KernelError> {
        let started = Instant::now();
        let probe = JupyterMessage::new(KernelInfoRequest {}, None);
        self.request_on_shell(probe, timeout).await?;
        Ok(started.elapsed())
    }

    /// `complete_request`: the reply's content (matches, cursor_start, cursor_end, metadata).
    pub async fn complete(
        &self,
        code: &str,
        cursor_pos: usize,
        timeout: Duration,
    ) -> Result<serde_json::Value, KernelError> {
        let request = CompleteRequest {
            code: code.to_string(),
            cursor_pos,
        };
        self.reply_content(JupyterMessage::new(request, None), timeout)
            .await
    }

    /// `inspect_request`: the reply's content (found, data, metadata).
    pub async fn inspect(
        &self,
        code: &str,
        cursor_pos: usize,
        detail_level: usize,
        timeout: Duration,
    ) -> Result<serde_json::Value, KernelError> {
        let request = InspectRequest {
            code: code.to_string(),
            cursor_pos,
            detail_level: Some(detail_level),
        };
        self.reply_content(JupyterMessage::new(request, None), timeout)
            .await
    }

    /// Sends a shell request and returns its reply's content as JSON.
    async fn reply_content(
        &self,
        request: JupyterMessage,
        timeout: Duration,
    ) -> Result<serde_json::Value, KernelError> {
        let reply = self.request_on_shell(request, timeout).await?;
        Ok(serde_json::to_value(&reply.content).unwrap_or_default())
    }

    /// Sends an `execute_request` and returns the routes its output arrives on. A silent
    /// request neither counts in the kernel's history nor publishes its input or result.
    pub async fn start_execute(
        &self,
        code: &str,
        silent: bool,
    ) -> Result<ExecutionHandle, KernelError> {
        let mut request = ExecuteRequest::new(code.to_string());
        request.allow_stdin = false;
        // Cells reach the kernel one at a time from the session's queue, each on its own. With
        // stop_on_error, ipykernel would abort a request that arrives just after a failed one
        // (an empty "aborted" reply), so a quick next cell after an exception would not run.
        request.stop_on_error = false;
        request.silent = silent;
        request.store_history = !silent;
        let message = JupyterMessage::new(request, None);
        let msg_id = message.header.msg_id.clone();
        let (iopub_tx, iopub) = mpsc::unbounded_channel();
        self.routes
            .iopub
            .lock()
            .expect("routes lock")
            .insert(msg_id.clone(), iopub_tx);
        let reply = self.register_reply(&msg_id);
        let handle = ExecutionHandle {
            msg_id,
            iopub,
            reply,
            routes: self.routes.clone(),
        };
        self.send_shell(message).await?;
        Ok(handle)
    }

    /// Asks the kernel on the control channel to interrupt what it runs. The reply is not
    /// awaited: ipykernel 6.17 answers with an empty `interrupt_reply`, which
    /// jupyter-protocol 2.0 cannot parse; whether the interrupt took shows in the cell's
    /// own output (a `KeyboardInterrupt` and `idle`).
    pub async fn interrupt(&self) -> Result<(), KernelError> {
        let message = JupyterMessage::new(InterruptRequest {}, None);
        self.send(Channel::Control, message).await
    }

    /// One heartbeat round trip within `timeout`. A missed beat resets the socket so the next
    /// beat starts clean.
    pub async fn heartbeat(&self, timeout: Duration) -> bool {
        let mut slot = self.heartbeat.lock().await;
        if slot.is_none() {
            match tokio::time::timeout(timeout, create_client_heartbeat_connection(&self.info))
                .await
            {
                Ok(Ok(connection)) => *slot = Some(connection),
                _ => return false,
            }
        }
        let Some(connection) = slot.as_mut() else {
            return false;
        };
        match tokio::time::timeout(timeout, connection.single_heartbeat()).await {
            Ok(Ok(())) => true,
            _ => {
                *slot = None;
                false
            }
        }
    }

    fn register_reply(&self, msg_id: &str) -> oneshot::Receiver<JupyterMessage> {
        let (tx, rx) = oneshot::channel();
        self.routes
            .replies
            .lock()
            .expect("routes lock")
            .insert(msg_id.to_string(), tx);
        rx
    }

    async fn send_shell(&self, message: JupyterMessage) -> Result<(), KernelError> {
        self.send(Channel::Shell, message).await
    }

    /// Sends `message`, reopening the channel when its connection dropped: ZeroMQ reconnects
    /// iopub by itself but not the dealer sockets, and over an overlay network a connection
    /// can drop while the kernel runs on. A socket with no peer refuses the message without
    /// sending anything, so sending it again cannot run anything twice.
    async fn send(&self, channel: Channel, message: JupyterMessage) -> Result<(), KernelError> {
        let msg_type = message.message_type().to_string();
        let deadline = Instant::now() + RECONNECT_GRACE;
        let mut socket = match channel {
            Channel::Shell => self.shell.lock().await,
            Channel::Control => self.control.lock().await,
        };
        loop {
            match socket.send(message.clone()).await {
                Ok(()) => return Ok(()),
                Err(RuntimeError::ZmqError(zeromq::ZmqError::ReturnToSender { .. }))
                    if Instant::now() < deadline =>
                {
                    tracing::warn!(
                        channel = channel.name(),
                        "kernel connection dropped; reopening it"
                    );
                    match self.reopen(channel).await {
                        Ok(reopened) => *socket = reopened,
                        Err(error) => {
                            tracing::debug!(%error, "reopening failed; trying again");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                Err(source) => return Err(KernelError::Send { msg_type, source }),
            }
        }
    }

    /// A fresh connection for `channel`, its replies routed like the first one's.
    async fn reopen(&self, channel: Channel) -> Result<DealerSendConnection, KernelError> {
        let endpoint = match channel {
            Channel::Shell => self.info.shell_url(),
            Channel::Control => self.info.control_url(),
        };
        let connecting = async {
            match channel {
                Channel::Shell => {
                    let identity = peer_identity_for_session(&self.session)?;
                    create_client_shell_connection_with_identity(
                        &self.info,
                        &self.session,
                        identity,
                    )
                    .await
                    .map(|c| c.split())
                }
                Channel::Control => create_client_control_connection(&self.info, &self.session)
                    .await
                    .map(|c| c.split()),
            }
        };
        let (send, recv) = tokio::time::timeout(RECONNECT_ATTEMPT, connecting)
            .await
            .map_err(|_| KernelError::Unreachable {
                channel: channel.name(),
                endpoint: endpoint.clone(),
                waited: RECONNECT_ATTEMPT,
            })?
            .map_err(|source| KernelError::Connect {
                channel: channel.name(),
                endpoint,
                source,
            })?;
        spawn_reply_reader(
            &self.readers,
            channel.name(),
            recv,
            self.routes.clone(),
            self.cancel.clone(),
        );
        Ok(send)
    }

    async fn request_on_shell(
        &self,
        message: JupyterMessage,
        timeout: Duration,
    ) -> Result<JupyterMessage, KernelError> {
        let msg_id = message.header.msg_id.clone();
        let msg_type = message.message_type().to_string();
        let reply = self.register_reply(&msg_id);
        self.send_shell(message).await?;
        self.await_reply(&msg_id, msg_type, reply, timeout).await
    }

    async fn await_reply(
        &self,
        msg_id: &str,
        msg_type: String,
        reply: oneshot::Receiver<JupyterMessage>,
        timeout: Duration,
    ) -> Result<JupyterMessage, KernelError> {
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(message)) => Ok(message),
            _ => {
                self.routes
                    .replies
                    .lock()
                    .expect("routes lock")
                    .remove(msg_id);
                Err(KernelError::NoReply { msg_type, timeout })
            }
        }
    }
}

/// Waits until the kernel listens on `port` of `info`: a TCP connection to `ip:port`, or
/// one to the socket file `{ip}-{port}` over IPC, succeeds. zeromq's own connect backs off
/// exponentially, which would add up to a second to every kernel start.
async fn wait_for_listener(
    channel: &'static str,
    info: &ConnectionInfo,
    port: u16,
    timeout: Duration,
) -> Result<(), KernelError> {
    let started = Instant::now();
    let address = match info.transport {
        Transport::TCP => format!("{}:{port}", info.ip),
        Transport::IPC => format!("{}-{port}", info.ip),
    };
    loop {
        let probe = async {
            match info.transport {
                Transport::TCP => tokio::net::TcpStream::connect(&address).await.map(drop),
                Transport::IPC => tokio::net::UnixStream::connect(&address).await.map(drop),
            }
        };
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(500), probe).await {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(KernelError::Unreachable {
                channel,
                endpoint: address,
                waited: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a send keeps reopening a dropped connection before it gives up.
const RECONNECT_GRACE: Duration = Duration::from_secs(5);
/// How long one attempt to reopen a connection may take.
const RECONNECT_ATTEMPT: Duration = Duration::from_secs(2);

/// The channels kernelbox sends requests on.
#[derive(Debug, Clone, Copy)]
enum Channel {
    Shell,
    Control,
}

impl Channel {
    fn name(self) -> &'static str {
        match self {
            Channel::Shell => "shell",
            Channel::Control => "control",
        }
    }
}

/// Logs a message that failed to arrive intact, and says whether the reader should go on.
fn keep_reading_after(channel: &'static str, error: &RuntimeError) -> bool {
    match error {
        RuntimeError::VerifyError(_) | RuntimeError::MissingHmac => {
            tracing::warn!(channel, "dropped a kernel message with a bad signature");
            true
        }
        RuntimeError::ParseError { msg_type, .. } if msg_type == "interrupt_reply" => {
            tracing::debug!(channel, "ignored an interrupt_reply without a status");
            true
        }
        RuntimeError::ZmqError(error) => {
            tracing::debug!(channel, %error, "kernel socket closed");
            false
        }
        other => {
            tracing::warn!(channel, error = %other, "dropped a malformed kernel message");
            true
        }
    }
}

/// Reads one channel until `cancel`, until its socket closes, or until `handle` says stop.
/// A message that did not arrive intact is logged and skipped.
async fn read_channel(
    channel: &'static str,
    cancel: CancellationToken,
    mut read: impl AsyncFnMut() -> Result<JupyterMessage, RuntimeError>,
    mut handle: impl AsyncFnMut(JupyterMessage) -> bool,
) {
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return,
            message = read() => message,
        };
        match message {
            Ok(message) => {
                if !handle(message).await {
                    return;
                }
            }
            Err(error) if keep_reading_after(channel, &error) => {}
            Err(_) => return,
        }
    }
}

fn spawn_reply_reader(
    tracker: &TaskTracker,
    channel: &'static str,
    mut socket: DealerRecvConnection,
    routes: Arc<Routes>,
    cancel: CancellationToken,
) {
    tracker.spawn(read_channel(
        channel,
        cancel,
        async move || socket.read().await,
        async move |message| {
            routes.deliver_reply(message);
            true
        },
    ));
}

fn spawn_iopub_reader(
    tracker: &TaskTracker,
    mut socket: jupyter_zmq_client::ClientIoPubConnection,
    routes: Arc<Routes>,
    seen: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    tracker.spawn(read_channel(
        "iopub",
        cancel,
        async move || socket.read().await,
        async move |message| {
            seen.send_modify(|count| *count += 1);
            routes.deliver_iopub(message);
            true
        },
    ));
}

/// Cells run with `allow_stdin: false`, so `input()` raises in the kernel. Should a kernel ask
/// anyway, it gets an empty answer instead of waiting forever.
fn spawn_stdin_responder(
    tracker: &TaskTracker,
    mut send: DealerSendConnection,
    mut recv: DealerRecvConnection,
    cancel: CancellationToken,
) {
    tracker.spawn(read_channel(
        "stdin",
        cancel,
        async move || recv.read().await,
        async move |message| {
            let JupyterMessageContent::InputRequest(_) = message.content else {
                return true;
            };
            tracing::warn!("kernel asked for input; answering with an empty line");
            let answer = JupyterMessage::new(InputReply::default(), Some(&message));
            send.send(answer).await.is_ok()
        },
    ));
}
