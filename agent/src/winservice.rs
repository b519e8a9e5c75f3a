//! Running as a Windows service: `lull-agent service`, started by the service control manager
//! (`lull-agent install` registers it).
//!
//! The manager starts the process and waits for it to connect back; the agent then reports
//! itself running, and a Stop or Shutdown from the manager ends it as Ctrl-C ends
//! `lull-agent run`. Started by hand, the command fails with a message saying so.

use std::ffi::OsString;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;
use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::{define_windows_service, service_dispatcher};

use crate::install::WINDOWS_SERVICE;

/// What the service runs: the agent until the receiver fires.
type Body = Box<dyn Fn(oneshot::Receiver<()>) -> anyhow::Result<()> + Send + Sync>;

static BODY: OnceLock<Body> = OnceLock::new();

/// Hands this process to the service control manager and runs `body` as the service; returns
/// when the service has stopped. `body` gets a receiver that fires when Windows asks the
/// service to stop.
pub fn run(
    body: impl Fn(oneshot::Receiver<()>) -> anyhow::Result<()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    BODY.set(Box::new(body))
        .map_err(|_| anyhow::anyhow!("the service is running already"))?;
    service_dispatcher::start(WINDOWS_SERVICE, ffi_service_main).context(
        "cannot reach the service control manager: `lull-agent service` is started by Windows \
         (`lull-agent install` registers it); to run the agent by hand, use `lull-agent run`",
    )
}

define_windows_service!(ffi_service_main, service_main);

fn service_main(_arguments: Vec<OsString>) {
    if let Err(e) = serve() {
        tracing::error!(error = %format!("{e:#}"), "the service failed");
    }
}

fn status(state: ServiceState, exit: u32) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: if exit == 0 {
            ServiceExitCode::Win32(0)
        } else {
            ServiceExitCode::ServiceSpecific(exit)
        },
        checkpoint: 0,
        wait_hint: Duration::from_secs(20),
        process_id: None,
    }
}

fn serve() -> anyhow::Result<()> {
    let (stop, stopped) = oneshot::channel();
    let stop = Mutex::new(Some(stop));
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            if let Some(stop) = stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = stop.send(());
            }
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = service_control_handler::register(WINDOWS_SERVICE, handler)
        .context("registering with the service control manager")?;
    handle.set_service_status(status(ServiceState::Running, 0))?;
    tracing::info!(
        service = WINDOWS_SERVICE,
        "started by the service control manager"
    );
    let body = BODY.get().context("no service body")?;
    let result = body(stopped);
    handle.set_service_status(status(
        ServiceState::Stopped,
        if result.is_ok() { 0 } else { 1 },
    ))?;
    result
}
