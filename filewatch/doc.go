// Package filewatch watches files that Kubernetes mounts from ConfigMaps and
// Secrets. Such a file is replaced through a symlink swap in its directory, so
// the directory is watched, not the file; a burst of events is debounced into
// one reload, and a periodic resync catches anything a watch missed. The
// policy watcher and the certificate reloaders use it; debounce and resync
// run on an injected clock.
package filewatch
