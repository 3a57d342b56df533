// Package filewatch watches files that Kubernetes mounts from ConfigMaps and
// Secrets. Such a file is replaced through a symlink swap in its directory, so
// the directory is watched, not the file; a burst of events is debounced into
// one reload, and a periodic resync catches anything a watch missed. Its
// users are the policy watcher and the webhook's and proxy's certificate
// reloaders; debounce and resync run on an injected clock.
package filewatch
