//go:build tools

// Package tools names the main packages this module builds, so that `go mod tidy` keeps their
// dependencies in go.sum. It is never compiled into anything.
package tools

import (
	// The metrics add-on: the resource metrics API (kubectl top, HorizontalPodAutoscaler).
	_ "sigs.k8s.io/metrics-server/cmd/metrics-server"
)
