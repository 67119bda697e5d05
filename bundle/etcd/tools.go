//go:build tools

// Package tools names the main package this module builds, so that `go mod tidy` keeps its
// dependencies in go.sum. It is never compiled into anything.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
