//go:build tools

// Package tools names the main packages this module builds, so that `go mod tidy` keeps their
// dependencies in go.sum. It is never compiled into anything.
package tools

import (
	// CNI reference plugins that Calico's cni image ships next to calico/calico-ipam (its
	// install init container copies them from /opt/cni/bin to the host).
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/meta/bandwidth"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
	_ "github.com/containernetworking/plugins/plugins/meta/tuning"

	// crictl, for the nodes.
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)
