//go:build tools

// Package tools names the Calico main packages this module builds, so that `go mod tidy` keeps
// their dependencies in go.sum: calico-node; the CNI plugin (also calico-ipam, by argv[0]) and its
// installer; kube-controllers, the wrapper that is its image's entrypoint, and the check-status
// binary of its probes. It is never compiled into anything.
package tools

import (
	_ "github.com/projectcalico/calico/cni-plugin/cmd/calico"
	_ "github.com/projectcalico/calico/cni-plugin/cmd/install"
	_ "github.com/projectcalico/calico/kube-controllers/cmd/check-status"
	_ "github.com/projectcalico/calico/kube-controllers/cmd/kube-controllers"
	_ "github.com/projectcalico/calico/kube-controllers/cmd/wrapper"
	_ "github.com/projectcalico/calico/node/cmd/calico-node"
)
