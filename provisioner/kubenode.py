"""What a Kubernetes node that is a container (the docker provider) gets beyond a VM, each with why.

`plan` prints this list; the Vagrantfile (docker options), the node image's entrypoint (fix-ups) and
the roles (kubeadm, kubelet, kube-proxy and containerd settings, applied only where Ansible finds the
node is a container) hold the settings themselves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    where: str
    what: str
    why: str


CONTAINER_NODE_SETTINGS = (
    Setting("docker", "--cgroupns=private", "kubelet and systemd see the node's own cgroup as the root"),
    Setting("docker", "--device-cgroup-rule='a *:* rwm'", "privileged pods (kube-proxy, calico-node) get every device"),
    Setting("docker", "-v /var (a volume)", "containerd's overlayfs and kubelet's disk stats need a real file system"),
    Setting(
        "docker",
        "--device /dev/kmsg, /lib/modules:ro",
        "kubelet's OOM watcher; module lookups (where the host has them)",
    ),
    Setting("docker", "systempaths=unconfined", "a writable /proc/sys for kubelet, kube-proxy and calico-node"),
    Setting("entrypoint", "cgroup mounts made writable", "Docker mounts them read-only without --privileged"),
    Setting("entrypoint", "/ made rshared", "mount propagation for kubelet's volumes"),
    Setting("containerd", "restrict_oom_score_adj = true", "no CAP_SYS_RESOURCE to lower OOM scores"),
    Setting("kubelet", "failSwapOn: false, no disk eviction, image GC at 100%", "swap and disk are the host's"),
    Setting("kube-proxy", "conntrack.maxPerCore: 0", "nf_conntrack_max is global to the host's kernel"),
)
CGROUP_V1_SETTINGS = (
    Setting("kubelet", "failCgroupV1: false", "kubelet 1.35-1.37 refuse cgroup v1 otherwise (deprecated)"),
    Setting("kubeadm", "ignore preflight SystemVerification", "it errors on cgroup v1 from 1.35"),
)


def plan_lines(cgroup_v1: bool) -> list[str]:
    rows = list(CONTAINER_NODE_SETTINGS) + (list(CGROUP_V1_SETTINGS) if cgroup_v1 else [])
    return [f"  {s.where:<11}{s.what:<56}{s.why}" for s in rows]
