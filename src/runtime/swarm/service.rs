//! A kernel's or a job's [`Sandbox`] as a one-task Swarm service: rendering it into a service
//! spec (limits, an equal memory reservation, the sandbox's container settings, restart
//! condition `none`, endpoint mode `dnsrr`), creating the service, and mapping the spec the
//! engine reports back into the sandbox's check; and reading an existing kernel service back
//! for a command run beside it. It neither waits for the task nor makes its network.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, Mount, MountTmpfsOptions, MountType,
    NetworkAttachmentConfig, ResourceObject, ResourcesUlimits, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecPrivileges,
    TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};
use rand::distr::{Alphanumeric, SampleString};

use super::image::KernelImage;
use super::network::EGRESS_PROXY_URL;
use super::{SwarmRuntime, engine_error, session_error};
use crate::runtime::sandbox::{Bind, Check, Reported, Sandbox, SandboxConfig, TMP, WORKSPACE};
use crate::runtime::{Limits, RuntimeError, labels};

/// How long a task's kernel has between SIGTERM and SIGKILL.
const STOP_GRACE_NANOS: i64 = 2_000_000_000;

/// A kernel service as a command run beside it sees it.
pub(super) struct KernelPlacement {
    pub workspace: PathBuf,
    pub network: String,
    pub session_id: String,
    pub owner: String,
    pub limits: Limits,
    /// How its task names its image.
    pub image: KernelImage,
}

impl SwarmRuntime {
    pub(super) fn sandbox_config(&self) -> SandboxConfig<'_> {
        SandboxConfig {
            instance: &self.config.instance,
            recipe: &self.config.recipe,
            user: &self.config.user,
            ca_bundle: self.config.ca_bundle.as_deref(),
            no_new_privileges: self.no_new_privileges,
            egress_proxy: Some(EGRESS_PROXY_URL),
            oci_runtime: None,
            gvisor: false,
        }
    }

    pub(super) fn service_name(&self) -> String {
        let suffix = Alphanumeric
            .sample_string(&mut rand::rng(), 10)
            .to_lowercase();
        format!("kb-{}-{suffix}", self.config.instance)
    }

    /// The one-task service `sandbox` describes, placed by `constraints`.
    fn service_spec(
        &self,
        name: &str,
        sandbox: &Sandbox,
        image: &KernelImage,
        constraints: Vec<String>,
    ) -> ServiceSpec {
        let limits = &sandbox.limits;
        let mut mounts: Vec<Mount> = sandbox
            .mounts
            .iter()
            .map(|mount| Mount {
                target: Some(mount.target.to_string()),
                source: Some(mount.source.clone()),
                typ: Some(MountType::BIND),
                read_only: mount.read_only.then_some(true),
                ..Default::default()
            })
            .collect();
        mounts.push(Mount {
            target: Some(TMP.to_string()),
            typ: Some(MountType::TMPFS),
            tmpfs_options: Some(MountTmpfsOptions {
                size_bytes: Some(limits.tmp_bytes),
                mode: Some(0o1777),
                ..Default::default()
            }),
            ..Default::default()
        });
        let container = TaskSpecContainerSpec {
            image: Some(image.reference()),
            labels: Some(sandbox.labels.clone()),
            args: Some(sandbox.command.clone()),
            env: Some(sandbox.env.clone()),
            user: Some(sandbox.user.clone()),
            dir: Some(WORKSPACE.to_string()),
            read_only: Some(sandbox.read_only_root),
            mounts: Some(mounts),
            capability_drop: Some(sandbox.cap_drop.clone()),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".to_string()),
                soft: Some(limits.open_files),
                hard: Some(limits.open_files),
            }]),
            privileges: sandbox
                .no_new_privileges
                .then(|| TaskSpecContainerSpecPrivileges {
                    no_new_privileges: Some(true),
                    ..Default::default()
                }),
            stop_grace_period: Some(STOP_GRACE_NANOS),
            ..Default::default()
        };
        let template = TaskSpec {
            container_spec: Some(container),
            resources: Some(TaskSpecResources {
                limits: Some(Limit {
                    nano_cpus: Some(limits.nano_cpus),
                    memory_bytes: Some(limits.memory_bytes),
                    pids: Some(limits.pids),
                }),
                reservations: Some(ResourceObject {
                    memory_bytes: Some(limits.memory_bytes),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(constraints),
                ..Default::default()
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(sandbox.network.clone()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        ServiceSpec {
            name: Some(name.to_string()),
            labels: Some(sandbox.labels.clone()),
            task_template: Some(template),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                mode: Some(EndpointSpecModeEnum::DNSRR),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates the one-task service `name` for `owner`'s `sandbox` in `image` and reads its
    /// sandbox back.
    pub(super) async fn create_service(
        &self,
        name: &str,
        (session_id, owner): (&str, &str),
        sandbox: &Sandbox,
        image: &KernelImage,
    ) -> Result<(), RuntimeError> {
        let constraints = self.placement(owner, image).await;
        let spec = self.service_spec(name, sandbox, image, constraints);
        self.docker
            .create_service(spec, self.registry_auth.clone())
            .await
            .map_err(session_error("create the service of", session_id))?;
        let service = self
            .docker
            .inspect_service(name, None)
            .await
            .map_err(session_error("inspect the service of", session_id))?;
        let spec = service.spec.unwrap_or_default();
        sandbox.verify(&reported(&spec), session_id, &self.api_version)
    }

    /// What a command run beside a kernel takes from the kernel's service: its workspace,
    /// network, labels and limits (read in one inspect).
    pub(super) async fn kernel_placement(
        &self,
        service: &str,
    ) -> Result<KernelPlacement, RuntimeError> {
        let spec = self
            .docker
            .inspect_service(service, None)
            .await
            .map_err(engine_error("inspect", service))?
            .spec
            .unwrap_or_default();
        let kernel = reported(&spec);
        let label = |key: &str| {
            kernel
                .labels
                .as_ref()
                .and_then(|l| l.get(key).cloned())
                .unwrap_or_default()
        };
        let defaults = Limits::default();
        let limits = Limits {
            memory_bytes: kernel.memory_bytes.unwrap_or(defaults.memory_bytes),
            nano_cpus: kernel.nano_cpus.unwrap_or(defaults.nano_cpus),
            pids: kernel.pids.unwrap_or(defaults.pids),
            ..defaults
        };
        let image = spec
            .task_template
            .as_ref()
            .and_then(|task| task.container_spec.as_ref()?.image.as_deref())
            .and_then(KernelImage::from_reference)
            .ok_or_else(|| RuntimeError::Engine {
                action: "inspect",
                container: service.to_string(),
                detail: "the service names no image by id or digest".to_string(),
            })?;
        let workspace = kernel.mounts.iter().find(|m| m.target == WORKSPACE);
        match (workspace, &kernel.network) {
            (Some(workspace), Some(network)) => Ok(KernelPlacement {
                workspace: PathBuf::from(&workspace.source),
                network: network.clone(),
                session_id: label(labels::SESSION_ID),
                owner: label(labels::OWNER),
                limits,
                image,
            }),
            _ => Err(RuntimeError::Engine {
                action: "inspect",
                container: service.to_string(),
                detail: "the service names no workspace or network".to_string(),
            }),
        }
    }
}

/// A service spec as the engine reports it, in the sandbox's terms, with the settings only
/// Swarm has: a memory reservation equal to the limit, the task's container labelled like
/// its service, restart condition `none` and endpoint mode `dnsrr`.
fn reported(spec: &ServiceSpec) -> Reported {
    let template = spec.task_template.clone().unwrap_or_default();
    let container = template.container_spec.unwrap_or_default();
    let resources = template.resources.unwrap_or_default();
    let limit = resources.limits.unwrap_or_default();
    let reserved = resources.reservations.unwrap_or_default();
    let mounts = container.mounts.unwrap_or_default();
    let tmp_bytes = mounts
        .iter()
        .find(|m| m.target.as_deref() == Some(TMP) && m.typ == Some(MountType::TMPFS))
        .and_then(|m| m.tmpfs_options.as_ref()?.size_bytes);
    let binds = mounts
        .iter()
        .filter(|m| m.typ == Some(MountType::BIND))
        .filter_map(|m| {
            Some(Bind {
                source: m.source.clone()?,
                target: m.target.clone()?,
                read_only: m.read_only == Some(true),
            })
        })
        .collect();
    let open_files = container.ulimits.as_ref().and_then(|ulimits| {
        let nofile = ulimits
            .iter()
            .find(|u| u.name.as_deref() == Some("nofile"))?;
        Some((nofile.soft?, nofile.hard?))
    });
    let service_labels = spec.labels.clone();
    let container_labels: Option<HashMap<String, String>> = container.labels;
    Reported {
        memory_bytes: limit.memory_bytes,
        nano_cpus: limit.nano_cpus,
        pids: limit.pids,
        open_files,
        // Nodes run their default runtime, which kernelbox does not choose.
        nproc: None,
        tmp_bytes,
        user: container.user,
        read_only_root: container.read_only,
        cap_drop: container.capability_drop,
        no_new_privileges: container.privileges.and_then(|p| p.no_new_privileges),
        mounts: binds,
        network: template
            .networks
            .unwrap_or_default()
            .into_iter()
            .find_map(|n| n.target),
        // A service cannot name one: nodes run it under their default runtime.
        oci_runtime: None,
        engine_specific: vec![
            Check {
                setting: "memory reservation",
                held: limit.memory_bytes.is_some() && reserved.memory_bytes == limit.memory_bytes,
            },
            Check {
                setting: "task labels",
                held: service_labels.is_some() && container_labels == service_labels,
            },
            Check::equal(
                "restart condition none",
                &TaskSpecRestartPolicyConditionEnum::NONE,
                template.restart_policy.and_then(|r| r.condition).as_ref(),
            ),
            Check::equal(
                "endpoint mode dnsrr",
                &EndpointSpecModeEnum::DNSRR,
                spec.endpoint_spec.as_ref().and_then(|e| e.mode).as_ref(),
            ),
        ],
        labels: service_labels,
    }
}
