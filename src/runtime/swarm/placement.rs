//! Where a kernel's task may run: the image's node constraint, the configured constraints and
//! the owners' node reservations (`kernelbox.reserved-for`), and, when no node takes a task,
//! the shortfall said in words (the most memory any eligible node has unreserved). It judges
//! constraints only to explain a refusal: Swarm's scheduler places every task.

use std::collections::BTreeSet;

use bollard::models::{Node, NodeState, TaskState};
use bollard::query_parameters::ListNodesOptions;

use super::SwarmRuntime;
use super::image::KernelImage;

/// Node label reserving a node for one owner: a tenant, or `pool` for the warm pool. An owner
/// with reserved nodes runs only there; everyone else stays off them.
const RESERVED_LABEL: &str = "kernelbox.reserved-for";

/// Whether `node` meets one Swarm placement constraint (`key == value` or `key != value`).
/// Attributes this does not know count as met: the scheduler has the last word.
pub(super) fn satisfies(node: &Node, constraint: &str) -> bool {
    let (key, wanted, equal) = match constraint.split_once("==") {
        Some((key, value)) => (key, value, true),
        None => match constraint.split_once("!=") {
            Some((key, value)) => (key, value, false),
            None => return true,
        },
    };
    let (key, wanted) = (key.trim(), wanted.trim());
    let spec = node.spec.as_ref();
    let description = node.description.as_ref();
    let actual: Option<String> = match key {
        "node.id" => node.id.clone(),
        "node.hostname" => description.and_then(|d| d.hostname.clone()),
        "node.role" => spec.and_then(|s| s.role).map(|r| r.to_string()),
        "node.platform.os" => description.and_then(|d| d.platform.as_ref()?.os.clone()),
        "node.platform.arch" => description.and_then(|d| d.platform.as_ref()?.architecture.clone()),
        key => match key.strip_prefix("node.labels.") {
            Some(label) => node_label(node, label).cloned(),
            None => return true,
        },
    };
    let same = actual.is_some_and(|actual| actual.eq_ignore_ascii_case(wanted));
    same == equal
}

fn node_label<'a>(node: &'a Node, label: &str) -> Option<&'a String> {
    node.spec.as_ref()?.labels.as_ref()?.get(label)
}

/// Which nodes an owner's kernels may use, from the nodes' reservations.
pub(super) struct Reservations {
    /// Owners that have nodes reserved for them.
    owners: BTreeSet<String>,
}

impl Reservations {
    pub(super) fn of(nodes: &[Node]) -> Self {
        Self {
            owners: nodes
                .iter()
                .filter_map(|n| node_label(n, RESERVED_LABEL).cloned())
                .collect(),
        }
    }

    /// Swarm constraints saying the same.
    pub(super) fn constraints(&self, owner: &str) -> Vec<String> {
        if self.owners.contains(owner) {
            vec![format!("node.labels.{RESERVED_LABEL} == {owner}")]
        } else {
            self.owners
                .iter()
                .map(|other| format!("node.labels.{RESERVED_LABEL} != {other}"))
                .collect()
        }
    }
}

impl SwarmRuntime {
    pub(super) async fn nodes(&self) -> Vec<Node> {
        self.docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .unwrap_or_default()
    }

    /// Every placement constraint of `owner`'s tasks in `image`, read from the swarm's
    /// nodes now.
    pub(super) async fn placement(&self, owner: &str, image: &KernelImage) -> Vec<String> {
        self.constraints(&self.nodes().await, owner, image)
    }

    /// Every placement constraint of `owner`'s tasks in `image` on `nodes`: a node holding
    /// the image (unless nodes pull it from a registry), the configured ones, and the
    /// reservations.
    fn constraints(&self, nodes: &[Node], owner: &str, image: &KernelImage) -> Vec<String> {
        let mut constraints: Vec<String> = image.constraint().into_iter().collect();
        constraints.extend(self.config.constraints.iter().cloned());
        constraints.extend(Reservations::of(nodes).constraints(owner));
        constraints
    }

    /// Why no node takes `owner`'s task reserving `memory` bytes: the most memory any node it
    /// may use has unreserved, or that it may use none.
    pub(super) async fn shortfall(
        &self,
        memory: i64,
        owner: &str,
        image: &KernelImage,
        scheduler: &str,
    ) -> String {
        let nodes = self.nodes().await;
        let constraints = self.constraints(&nodes, owner, image);
        let eligible: Vec<_> = nodes
            .iter()
            .filter(|n| {
                n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY)
                    && constraints.iter().all(|c| satisfies(n, c))
            })
            .collect();
        if eligible.is_empty() {
            let image = match image {
                KernelImage::Held { .. } => {
                    "nodes must hold the kernel image (`kernelbox image distribute` labels them), and "
                }
                KernelImage::Pinned(_) => "",
            };
            return format!(
                "no ready node meets the kernel's placement ({}): {image}nodes labelled {RESERVED_LABEL}=<owner> take only that owner's kernels, here {owner}'s; the scheduler said: {scheduler}",
                constraints.join(", ")
            );
        }
        let tasks = self.docker.list_tasks(None).await.unwrap_or_default();
        let mut best: Option<(i64, String)> = None;
        for node in &eligible {
            let total = node
                .description
                .as_ref()
                .and_then(|d| d.resources.as_ref()?.memory_bytes)
                .unwrap_or(0);
            let reserved: i64 = tasks
                .iter()
                .filter(|t| t.node_id == node.id && t.desired_state == Some(TaskState::RUNNING))
                .filter_map(|t| {
                    t.spec
                        .as_ref()?
                        .resources
                        .as_ref()?
                        .reservations
                        .as_ref()?
                        .memory_bytes
                })
                .sum();
            let free = total - reserved;
            let name = node
                .description
                .as_ref()
                .and_then(|d| d.hostname.clone())
                .unwrap_or_default();
            if best.as_ref().is_none_or(|(most, _)| free > *most) {
                best = Some((free, name));
            }
        }
        let (free, node) = best.unwrap_or_default();
        format!(
            "no node has {} MiB of memory free to reserve; the most free is {} MiB on {node} ({} node(s) open to {owner} can run the image); the scheduler said: {scheduler}",
            memory >> 20,
            free.max(0) >> 20,
            eligible.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{NodeDescription, NodeSpec, NodeSpecRoleEnum};

    fn node(role: NodeSpecRoleEnum, labels: &[(&str, &str)]) -> Node {
        Node {
            id: Some("n1".to_string()),
            spec: Some(NodeSpec {
                role: Some(role),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: Some("worker-1".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn constraints_are_judged_like_the_scheduler_judges_them() {
        let worker = node(
            NodeSpecRoleEnum::WORKER,
            &[("kernelbox.reserved-for", "acme")],
        );
        assert!(satisfies(&worker, "node.role==worker"));
        assert!(!satisfies(&worker, "node.role == manager"));
        assert!(satisfies(&worker, "node.hostname != worker-2"));
        assert!(satisfies(
            &worker,
            "node.labels.kernelbox.reserved-for == acme"
        ));
        assert!(!satisfies(
            &worker,
            "node.labels.kernelbox.reserved-for != acme"
        ));
        assert!(!satisfies(&worker, "node.labels.absent == x"));
        assert!(satisfies(&worker, "node.labels.absent != x"));
        assert!(satisfies(&worker, "engine.labels.unknown == x"));
    }

    #[test]
    fn reservations_keep_owners_apart() {
        let nodes = [
            node(NodeSpecRoleEnum::WORKER, &[(RESERVED_LABEL, "acme")]),
            node(NodeSpecRoleEnum::WORKER, &[]),
        ];
        let reservations = Reservations::of(&nodes);
        let acme = reservations.constraints("acme");
        assert!(acme.iter().all(|c| satisfies(&nodes[0], c)));
        assert!(!acme.iter().all(|c| satisfies(&nodes[1], c)));
        let others = reservations.constraints("globex");
        assert!(!others.iter().all(|c| satisfies(&nodes[0], c)));
        assert!(others.iter().all(|c| satisfies(&nodes[1], c)));
    }
}
