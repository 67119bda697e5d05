// The project's stand-in for Traefik's nested module github.com/traefik/traefik/dynamic/ext, which
// Traefik's go.mod replaces by a directory its module zip leaves out (see ../go.mod).
module github.com/traefik/traefik/dynamic/ext

go 1.26.0
