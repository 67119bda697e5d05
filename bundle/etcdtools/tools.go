//go:build tools

// Package tools names the main packages this module builds, so that `go mod tidy` keeps their
// dependencies in go.sum. It is never compiled into anything.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/etcdutl/v3"
)
