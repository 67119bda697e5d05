//go:build tools

// Package tools names the main packages this module builds, so that `go mod tidy` keeps their
// dependencies in go.sum. It is never compiled into anything.
package tools

import (
	// The ingress add-on: Traefik, with its Kubernetes Ingress and Gateway API providers.
	_ "github.com/traefik/traefik/v3/cmd/traefik"
)
