//go:build tools

// Package tools names the main packages this module builds, so that `go mod tidy` keeps their
// dependencies in go.sum. It is never compiled into anything.
package tools

import (
	// The helm client that `provision.py helm` runs on this host against the cluster.
	_ "helm.sh/helm/v4/cmd/helm"
)
