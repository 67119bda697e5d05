"""The ingress add-on (issue: a usable cluster): the spec field and flag, the bundle's recipe (the
Traefik build's replaces and its trimmed lego, the Gateway API's CRDs) and the role naming the same
versions, the manifest the role renders (by Ansible itself), plan's line, and verify's manifest. No
machine, no network."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.bundle import source
from provisioner.cli import _overrides, build_parser
from provisioner.command.plan import addons_line
from provisioner.errors import SpecError
from provisioner.inventory import cluster_vars
from provisioner.spec import build_spec, check_engine_fields
from tests.infra.test_addons import ingress_manifest
from tests.unit.test_playbooks_syntax import render_role_template

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "traefik_ingress"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
GOMOD = (REPO / "bundle" / "ingress" / "go.mod").read_text()


def test_ingress_is_off_by_default_and_a_flag_turns_it_on() -> None:
    assert build_spec().ingress is False and DEFAULTS["traefik_ingress_enabled"] is False
    args = build_parser().parse_args(["up", "--ingress"])
    assert _overrides(args)["ingress"] is True
    assert build_spec(_overrides(args)).ingress is True
    assert "ingress" not in _overrides(build_parser().parse_args(["up"]))


def test_ingress_is_refused_for_a_swarm() -> None:
    with pytest.raises(SpecError, match="ingress is a Kubernetes add-on"):
        check_engine_fields("swarm", {"ingress"})


def test_the_bundle_recipe_and_the_role_name_the_same_traefik_and_gateway_api() -> None:
    recipe = source.load_components()
    image = DEFAULTS["traefik_ingress_image"]
    assert image in recipe["addon_images"] and image in recipe["download_addon_images"]
    assert source._image_key(image) == "traefik" and recipe["images"]["traefik"]["files"] == {
        "/usr/local/bin/traefik": "ingress/traefik"
    }
    pinned = re.search(r"^require github.com/traefik/traefik/v3 (v\S+)", GOMOD, re.M)
    assert pinned is not None and image.endswith(":" + pinned.group(1))
    gateway = re.search(r"^\s*sigs.k8s.io/gateway-api (v\S+)", GOMOD, re.M)
    assert gateway is not None
    assert recipe["gateway_api"]["version"] == gateway.group(1) == DEFAULTS["traefik_ingress_gateway_api_version"]
    assert source.gateway_api_rel(recipe) == f"manifests/gateway-api-{gateway.group(1)}.yaml"
    assert (
        DEFAULTS["traefik_ingress_gateway_api_file"]
        .strip()
        .startswith("{{ kube_bundle_dir ~ '/manifests/gateway-api-'")
    )


def test_the_traefik_build_replaces_what_the_module_proxy_cannot_give_with_the_projects_own() -> None:
    (build,) = [b for b in source.go_builds(source.load_components()) if b.name == "ingress"]
    assert build.packages == {"traefik": "github.com/traefik/traefik/v3/cmd/traefik"}
    replaces = dict(re.findall(r"^\s+(\S+) => (\S+(?: \S+)?)$", GOMOD, re.M))
    # The nested extension module: a directory of the project's own, empty types only.
    assert replaces["github.com/traefik/traefik/dynamic/ext"] == "./ext"
    ext = (REPO / "bundle" / "ingress" / "ext" / "ext.go").read_text()
    assert re.findall(r"^type (\w+) struct\{\}$", ext, re.M) == ["HTTP", "Router"]
    # lego: a directory the build makes from the module cache; the replace names the trim's `into`.
    (trim,) = build.trim
    assert (trim.module, replaces[trim.module]) == ("github.com/go-acme/lego/v5", f"./{trim.into}")
    assert re.search(rf"^\s+{re.escape(trim.module)} {re.escape(trim.version)} ", GOMOD, re.M), "trim.version"
    assert "providers/dns" in trim.drop
    overlay = REPO / "bundle" / "ingress" / trim.overlay
    assert trim.overlay.startswith("_"), "go ignores a directory whose name starts with _: the overlay is no package"
    assert [p.relative_to(overlay).as_posix() for p in overlay.rglob("*.go")] == ["providers/dns/none.go"]
    assert "func NewDNSChallengeProviderByName(" in (overlay / "providers/dns/none.go").read_text()
    # Nothing third-party is kept in the module directory.
    assert not (REPO / "bundle" / "ingress" / trim.into).exists()


def test_traefik_is_built_only_into_a_bundle_that_asks_for_the_ingress_add_on() -> None:
    recipe = source.load_components()
    (build,) = [b for b in source.go_builds(recipe) if b.name == "ingress"]
    assert build.optional and [b.name for b in source.go_builds(recipe) if b.optional] == ["ingress"]
    assert source.optional_images(recipe) == {DEFAULTS["traefik_ingress_image"]}
    for kind in ("source", "download"):
        assert DEFAULTS["traefik_ingress_image"] in source.addon_images(recipe, kind)
        assert DEFAULTS["traefik_ingress_image"] not in source.addon_images(recipe, kind, ingress=False)


def test_the_build_inputs_digest_changes_with_the_trim() -> None:
    from dataclasses import replace

    (build,) = [b for b in source.go_builds(source.load_components()) if b.name == "ingress"]
    (trim,) = build.trim
    other = replace(build, trim=(replace(trim, drop=(*trim.drop, "acme")),))
    assert source.build_inputs_digest(build, "-s") != source.build_inputs_digest(other, "-s")


def test_the_copy_leaves_out_the_dropped_paths(tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "mod"
    for rel in ("providers/dns/abion/a.go", "providers/dns/zz.go", "providers/http/h.go", "cmd/main.go", "go.mod"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    shutil.copytree(src, tmp_path / "out", ignore=source._dropping({src / "providers/dns", src / "cmd"}))
    kept = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert kept == ["go.mod", "providers/http/h.go"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ingress")
    return render_role_template(root, ROLE, "traefik-ingress.yaml.j2", {"cp": {}})["cp"]


def _kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def test_traefik_serves_ingress_and_the_gateway_on_the_node_port(rendered: list[dict[str, Any]]) -> None:
    container = _kind(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == DEFAULTS["traefik_ingress_image"]
    args = container["args"]
    assert {"--providers.kubernetesingress=true", "--providers.kubernetesgateway=true"} <= set(args)
    # Nothing phones home: no version check, no anonymous usage report.
    assert {"--global.checknewversion=false", "--global.sendanonymoususage=false"} <= set(args)
    web = [a for a in args if a.startswith("--entrypoints.web.address=")]
    assert web == ["--entrypoints.web.address=:8000"]
    # Traefik maps a Gateway listener to the entry point with the listener's port.
    (listener,) = _kind(rendered, "Gateway")["spec"]["listeners"]
    assert web[0].endswith(f":{listener['port']}") and listener["allowedRoutes"]["namespaces"]["from"] == "All"
    gateway = _kind(rendered, "Gateway")
    assert (gateway["metadata"]["namespace"], gateway["metadata"]["name"]) == (
        DEFAULTS["traefik_ingress_namespace"],
        DEFAULTS["traefik_ingress_gateway"],
    )
    assert _kind(rendered, "GatewayClass")["spec"]["controllerName"] == "traefik.io/gateway-controller"
    ingress_class = _kind(rendered, "IngressClass")
    assert ingress_class["spec"]["controller"] == "traefik.io/ingress-controller"
    assert ingress_class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"] == "true"
    (port,) = _kind(rendered, "Service")["spec"]["ports"]
    assert port["nodePort"] == DEFAULTS["traefik_ingress_http_node_port"] and port["targetPort"] == "web"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    # The restricted Pod Security Standard, enforced on its namespace; no priority over user workloads.
    namespace = _kind(rendered, "Namespace")
    assert namespace["metadata"]["name"] == DEFAULTS["traefik_ingress_namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = _kind(rendered, "Deployment")["spec"]["template"]["spec"]
    assert "priorityClassName" not in pod and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    # The bundle's image carries the CA certificates upstream's has (the userland layer).
    assert source.load_components()["images"]["traefik"]["userland"] is True


def test_traefik_may_read_what_its_two_providers_watch(rendered: list[dict[str, Any]]) -> None:
    rules = _kind(rendered, "ClusterRole")["rules"]

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)

    watched = [
        ("", "services"),
        ("", "secrets"),
        ("", "configmaps"),
        ("", "namespaces"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "ingresses"),
        ("networking.k8s.io", "ingressclasses"),
        *(
            ("gateway.networking.k8s.io", r)
            for r in ("gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants", "tlsroutes")
        ),
    ]
    missing = [f"{g}/{r}" for g, r in watched if not all(allowed(g, r, v) for v in ("list", "watch"))]
    assert not missing
    for status in ("gatewayclasses/status", "gateways/status", "httproutes/status"):
        assert allowed("gateway.networking.k8s.io", status, "update"), status
    assert allowed("networking.k8s.io", "ingresses/status", "update")


def test_plan_and_the_inventory_say_whether_the_cluster_gets_ingress(tmp_path: Path) -> None:
    on, off = build_spec({"ingress": True}), build_spec()
    assert "ingress: Traefik" in addons_line(on, False) and "NodePort 30080" in addons_line(on, False)
    assert addons_line(off, False).splitlines()[-1].strip() == "ingress: off (--ingress turns it on)"
    assert "installed earlier stays" in addons_line(off, True)
    assert cluster_vars(on, tmp_path)["traefik_ingress_enabled"] is True
    assert cluster_vars(off, tmp_path)["traefik_ingress_enabled"] is False


def test_verify_routes_by_host_name_through_an_ingress_and_an_httproute() -> None:
    hosts = {"ingress": "ingress-abc.verify.test", "gateway": "gateway-abc.verify.test"}
    docs = list(yaml.safe_load_all(ingress_manifest("ns1", "img:1", hosts, ("traefik", "traefik"), "traefik")))
    ingress = _kind(docs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "traefik"
    assert ingress["spec"]["rules"][0]["host"] == hosts["ingress"]
    route = _kind(docs, "HTTPRoute")
    assert route["spec"]["hostnames"] == [hosts["gateway"]]
    assert route["spec"]["parentRefs"] == [{"name": "traefik", "namespace": "traefik"}]
    service = _kind(docs, "Service")
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": service["metadata"]["name"], "port": 80}]
    assert _kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"
