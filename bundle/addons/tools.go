//go:build tools

// Package tools names the main packages this module builds, so that `go mod tidy` keeps their
// dependencies in go.sum. It is never compiled into anything.
package tools

import (
	// The storage add-on: dynamic local volumes behind the default StorageClass.
	_ "github.com/rancher/local-path-provisioner"
)
