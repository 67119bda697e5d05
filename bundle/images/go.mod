// The bundle's own small programs: the pod sandbox (pause) and the smoke-test web server that
// verify deploys. No third-party code.
module provisioner.local/bundle/images

go 1.26.0
