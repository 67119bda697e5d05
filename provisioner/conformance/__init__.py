"""The Kubernetes conformance suite for `provision.py conformance`, built and run here offline.

- suite: e2e.test, ginkgo and agnhost built from the Go module bundle/conformance pins, cached under
  /var/cache/provisioner/conformance/ like the bundle's binaries;
- testimages: the images the [Conformance] tests run, assembled from that build, Debian's packages and
  the bundle's images under exactly the names the suite asks for;
- report: what the run's junit report says, by SIG.
"""
