//! The Jupyter side of a session: connection details, the ZeroMQ client, and turning a cell's
//! iopub messages into a result. Only this module speaks the Jupyter wire protocol; nothing
//! above it sees a ZeroMQ frame. Kernel output is data: it is never evaluated or unpickled.

mod client;
mod connection;
mod execution;

pub use client::{KernelClient, KernelError, ReaderTasks};
pub use connection::{ChannelPorts, KernelConnection};
pub use execution::{DisplayBundle, ErrorInfo, ExecutionOutput, OutputEvent, OutputStream};
#[cfg(test)]
pub use execution::{message_from_json, strip_ansi};
