"""What each Vagrant provider does around `vagrant up` and `vagrant destroy`, behind one small
interface, so that `up` reads as the pipeline spec -> bundle -> machines -> inventory -> stages ->
verify and the provider specifics live here:

- check_clear: refuse a cluster name, machine name or node network that another cluster holds
  (see identity.py), before anything is made;
- prepare_host: what the host needs before machines (docker: the node network free and the node
  image; libvirt: the daemons, the domain type and the box);
- mount_bundle: how the nodes see the Kubernetes bundle (docker: a read-only mount; libvirt: a
  read-only virtiofs share);
- keys: SSH key handling before the first machine (docker: the cluster key);
- clean_up: what `vagrant destroy` leaves behind (docker: containers and the network; libvirt:
  domains, volumes, networks, the daemons it started).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, TextIO

from provisioner import box, identity, image, kubeimage, libvirt, providers
from provisioner.errors import ProvisionError
from provisioner.progress import Progress
from provisioner.spec import ClusterSpec
from provisioner.vagrant import ensure_cluster_key


class Provider:
    """The default: nothing to do around Vagrant (VirtualBox)."""

    name = "virtualbox"

    def check_clear(self, spec: ClusterSpec, root: Path, cluster_id: str) -> None:
        """Refuse what another cluster on this host holds of this one's names or node network."""

    def prepare_host(
        self, spec: ClusterSpec, inputs: dict[str, Any], progress: Progress, timings: dict[str, float], out: TextIO
    ) -> tuple[ClusterSpec, dict[str, Any]]:
        """Ready the host for this spec's machines; returns the spec (images or boxes resolved) and
        the settings only the Vagrantfile reads (kept beside the spec in cluster.json)."""
        return spec, {}

    def mount_bundle(self, bundle: Path | None) -> dict[str, Any]:
        """Vagrantfile settings that show the Kubernetes bundle to the nodes ({} when they get it over SSH)."""
        return {}

    def preload(
        self,
        spec: ClusterSpec,
        inputs: dict[str, Any],
        bundle: Path | None,
        progress: Progress,
        timings: dict[str, float],
    ) -> ClusterSpec:
        """The spec with machines that start with the bundle already on them, where the provider can
        make such machines (the spec unchanged elsewhere)."""
        return spec

    def keys(self, root: Path, spec: ClusterSpec, machine_states: dict[str, str]) -> None:
        """SSH keys to make before the first machine is created."""

    def before_destroy(self) -> None:
        """What must run for `vagrant destroy` to work."""

    def clean_up(self, spec: ClusterSpec, cluster_id: str, out: TextIO) -> None:
        """Remove what `vagrant destroy` leaves behind of this cluster (and of no other)."""

    def clean_up_by_dir(self, root: Path) -> tuple[list[str], str]:
        """Remove the machines made from the state directory `root`: those whose identity names it, and
        those its Vagrant directory records (the way out when the cluster's own state is damaged).
        Returns their names, and what could not be removed ("" when nothing is left)."""
        ids = identity.vagrant_machine_ids(root, self.name)
        left = (
            f"{len(ids)} {self.name} machine(s) that {root}/vagrant records ({', '.join(sorted(ids))})" if ids else ""
        )
        return (
            [],
            left
            and f"{left}: this toolkit cannot remove them without their spec; remove them with the provider's own tools",
        )


class Docker(Provider):
    name = "docker"

    def check_clear(self, spec: ClusterSpec, root: Path, cluster_id: str) -> None:
        providers.check_docker_clear(spec, root, cluster_id)

    def prepare_host(
        self, spec: ClusterSpec, inputs: dict[str, Any], progress: Progress, timings: dict[str, float], out: TextIO
    ) -> tuple[ClusterSpec, dict[str, Any]]:
        # The toolkit's own images (plain, or with the runtime baked in) are built here from Debian
        # packages when missing, cached by recipe hash; any other image is the user's business.
        own = image.own_image(spec.image)
        if own is None:
            return spec, {}
        # Kubernetes nodes start from the image with the container runtime baked in (the runtime
        # stage then only configures and starts it: about 50 s less per cold `up`), unless the spec
        # names an image.
        with_runtime = own or (spec.image == "" and spec.engine == "kubernetes")
        recipe = image.ImageRecipe(mirror=image.host_debian_mirror(), with_runtime=with_runtime)
        if not image.image_exists(recipe.tag):
            progress.start(f"node image {recipe.tag}")
            image.ensure_image(recipe)
            timings["image"] = progress.stop("built")
        data = spec.to_dict()
        data["image"] = recipe.tag
        return ClusterSpec.from_dict(data), {}

    def mount_bundle(self, bundle: Path | None) -> dict[str, Any]:
        # The directory holding the bundles, read-only (see the Vagrantfile).
        return {"bundle_root": str(bundle.parent)} if bundle is not None else {}

    def preload(
        self,
        spec: ClusterSpec,
        inputs: dict[str, Any],
        bundle: Path | None,
        progress: Progress,
        timings: dict[str, float],
    ) -> ClusterSpec:
        # Kubernetes nodes from the bundle start from the Kubernetes node image (kubeimage.py): the
        # runtime image with the bundle's binaries and images in it, built once per bundle. Unless the
        # spec names another image: `--image provisioner/node-runtime` keeps the import on every node.
        named = str(inputs.get("image") or "")
        if spec.engine != "kubernetes" or bundle is None or (named and not kubeimage.is_kube_image(named)):
            return spec
        base = spec.image  # prepare_host resolved it to the runtime image
        tag = kubeimage.image_tag(base, bundle)
        if not image.image_exists(tag):
            progress.start(f"Kubernetes node image {tag} (the bundle preloaded)")
            try:
                tag, _ = kubeimage.ensure_kube_image(base, bundle)
            except ProvisionError as exc:
                # The nodes can still start from the runtime image and import the bundle themselves.
                progress.stop("failed")
                progress.note(
                    f"the Kubernetes node image could not be built ({exc.message}); the nodes start from {base} "
                    "and import the bundle's images themselves (slower)"
                )
                return spec
            timings["image"] = timings.get("image", 0.0) + progress.stop("built")
        data = spec.to_dict()
        data["image"] = tag
        return ClusterSpec.from_dict(data)

    def keys(self, root: Path, spec: ClusterSpec, machine_states: dict[str, str]) -> None:
        ensure_cluster_key(root, spec.name, create=all(s == "not_created" for s in machine_states.values()))

    def clean_up(self, spec: ClusterSpec, cluster_id: str, out: TextIO) -> None:
        """Containers of this cluster that Vagrant no longer knows about (its state was lost), found by
        the cluster's id (a cluster made before identities existed: by its name, among containers
        that carry no id), and the node network once nothing uses it."""
        if shutil.which("docker") is None:
            return
        label = f"{identity.LABEL_ID}={cluster_id}" if cluster_id else f"{identity.LABEL_NAME}={spec.name}"
        names = [
            m.name
            for m in providers.docker_machines()
            if (m.cluster_id == cluster_id if cluster_id else (m.cluster == spec.name and not m.cluster_id))
        ]
        if names:
            _remove_containers(names)
            out.write(f"removed containers Vagrant no longer knew of ({label}): {', '.join(names)}\n")
        _remove_unused_networks([spec.network])

    def clean_up_by_dir(self, root: Path) -> tuple[list[str], str]:
        ids = identity.vagrant_machine_ids(root, self.name)
        if shutil.which("docker") is None:
            return (
                [],
                f"{len(ids)} container(s) that {root}/vagrant records, and docker is not installed" if ids else "",
            )
        found = [m for m in providers.docker_machines() if m.state_dir == str(root) or identity.is_ours(m, "", ids)]
        problem = _remove_containers([m.name for m in found]) if found else ""
        _remove_unused_networks(sorted({s for m in found for s in m.subnets}))
        return ([] if problem else [m.name for m in found]), problem


def _remove_containers(names: list[str]) -> str:
    """`docker rm -f -v` (the /var volumes go with them); "" or what docker said went wrong."""
    proc = subprocess.run(["docker", "rm", "-f", "-v", *names], capture_output=True, text=True, check=False)
    return "" if proc.returncode == 0 else f"docker rm of {', '.join(names)} failed: {proc.stderr.strip()[-300:]}"


def _remove_unused_networks(subnets: list[str]) -> None:
    """The Vagrant-made docker networks of these subnets that no container uses any more."""
    for subnet in subnets:
        if not providers.docker_network_users(subnet):
            subprocess.run(["docker", "network", "rm", f"vagrant_network_{subnet}"], capture_output=True, check=False)


class Libvirt(Provider):
    name = "libvirt"

    def mount_bundle(self, bundle: Path | None) -> dict[str, Any]:
        # The directory holding the bundles, shared over virtiofs and mounted read-only (see the Vagrantfile).
        return {"bundle_root": str(bundle.parent)} if bundle is not None else {}

    def check_clear(self, spec: ClusterSpec, root: Path, cluster_id: str) -> None:
        """Domains of another cluster (by the identity in their description), or domains named as this
        cluster's machines that its Vagrant directory does not record, or any other domain on this
        cluster's node network (vagrant-libvirt would put both clusters on one libvirt network)."""
        if shutil.which("virsh") is None or not libvirt.answers():
            return
        wanted = [f"{spec.name}-{n.name}" for n in spec.nodes]
        identity.refuse_conflict(
            identity.conflict(
                libvirt.domains(),
                name=spec.name,
                network=spec.network,
                node_names=wanted,
                cluster_id=cluster_id,
                vagrant_ids=identity.vagrant_machine_ids(root, "libvirt"),
            )
        )

    def prepare_host(
        self, spec: ClusterSpec, inputs: dict[str, Any], progress: Progress, timings: dict[str, float], out: TextIO
    ) -> tuple[ClusterSpec, dict[str, Any]]:
        """libvirt daemons and storage pool (started here where no service manager runs them), the
        domain type (kvm only where a stock guest kernel really runs, else qemu), and the toolkit's own
        box built from Debian packages unless the spec names another box."""
        progress.start("libvirt (daemons, storage pool)")
        done = libvirt.ensure_host()
        progress.stop(", ".join(done) if done else "ready")
        kind, why = libvirt.domain_type()
        os.environ["PROVISION_LIBVIRT_DRIVER"] = kind  # the Vagrantfile reads it (and cluster.json's copy)
        out.write(f"    libvirt domain type: {kind} ({why})\n")
        # The default box and the toolkit's own box names are built here from Debian packages when
        # missing (cached by recipe hash); any other box is Vagrant's business.
        own = {box.BOX_NAME: False, box.BOX_NAME_RUNTIME: True}
        wanted = inputs.get("box")
        if wanted is None or wanted in own:
            recipe = box.BoxRecipe(mirror=image.host_debian_mirror(), with_runtime=own.get(str(wanted), False))
            if not box.box_present(recipe):
                progress.start(f"box {recipe.name} {recipe.version} (Debian packages)")
                box.ensure_box(recipe)
                timings["box"] = progress.stop("built")
            data = spec.to_dict()
            data["box"] = recipe.name
            spec = ClusterSpec.from_dict(data)
        return spec, {"libvirt_driver": kind}

    def before_destroy(self) -> None:
        libvirt.ensure_host()  # vagrant-libvirt needs libvirtd to destroy anything

    def clean_up(self, spec: ClusterSpec, cluster_id: str, out: TextIO) -> None:
        """Domains, volumes and networks of this cluster that Vagrant no longer knows about; then, when
        no machine of any cluster is left, the box volumes, the pool, the daemons the toolkit started
        and the LIBVIRT_* iptables chains."""
        node_net = libvirt.network_for_subnet(spec.network.rsplit(".", 1)[0] + ".")
        # This cluster's domains by their exact names (a prefix would also match cluster lab-2's
        # when destroying lab), sparing those that carry another cluster's id (a cluster of the same
        # name in another state directory), and then its networks too, which that cluster shares.
        names = [f"{spec.name}-{n.name}" for n in spec.nodes]
        spared = libvirt.foreign_domains(libvirt.domains(), names, cluster_id)
        networks = [] if spared else [f"{spec.name}-mgmt", *([node_net] if node_net else [])]
        left = libvirt.cleanup_cluster([n for n in names if n not in spared], networks)
        if spared:
            out.write(f"left alone, another cluster's (its id differs): {', '.join(spared)}\n")
        if not left.empty():
            out.write(f"removed leftovers: {', '.join(left.domains + left.volumes + left.networks)}\n")
        host = libvirt.teardown_host()
        if host:
            out.write(f"libvirt host cleaned: {', '.join(host)}\n")

    def clean_up_by_dir(self, root: Path) -> tuple[list[str], str]:
        ids = identity.vagrant_machine_ids(root, self.name)
        if shutil.which("virsh") is None or not libvirt.answers():
            return (
                [],
                f"{len(ids)} libvirt domain(s) that {root}/vagrant records, and libvirtd does not answer"
                if ids
                else "",
            )
        found = [m for m in libvirt.domains() if m.state_dir == str(root) or identity.is_ours(m, "", ids)]
        if not found:
            return [], ""
        # Their networks are named after the cluster and its node network: the domains' own record.
        names = [m.name for m in found]
        nets = sorted({f"{m.cluster}-mgmt" for m in found if m.cluster})
        nets += sorted(
            {n for m in found for s in m.subnets if (n := libvirt.network_for_subnet(s.rsplit(".", 1)[0] + "."))}
        )
        gone = libvirt.cleanup_cluster(names, nets).domains
        missed = sorted(set(names) - set(gone))
        return gone, f"libvirt domains {', '.join(missed)} could not be removed" if missed else ""


def for_name(name: str) -> Provider:
    return {"docker": Docker(), "libvirt": Libvirt()}.get(name, Provider())
