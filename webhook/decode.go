package webhook

import "github.com/kubedefender/kubedefender/internal/jsonscan"

// scanReview is the fast path of decodeReview: one pass over the body with
// jsonscan, reading the fields of review and validating and skipping the
// rest (a DELETE's old object is most of the body) without building it. It
// decodes exactly what encoding/json decodes into review, repeated keys
// included (the last wins; objects merge; null leaves a string or struct as
// it was), and declines everything else with an error: a body it refuses
// or declines goes to encoding/json (FuzzDecodeReviewParity holds the two
// together).
func scanReview(body []byte, rv *review) error {
	d := jsonscan.Scanner{B: body}
	err := d.Object(func(k []byte) error {
		switch string(k) {
		case "apiVersion":
			return d.StringInto(&rv.APIVersion, constant)
		case "kind":
			return d.StringInto(&rv.Kind, constant)
		case "request":
			switch d.Peek() {
			case 'n':
				rv.Request = nil
				return d.Null()
			case '{':
				if rv.Request == nil {
					rv.Request = &request{}
				}
				return scanRequest(&d, rv.Request)
			}
			return jsonscan.ErrSlowPath
		}
		return d.Other(k, "apiVersion", "kind", "request")
	})
	if err != nil {
		return err
	}
	return d.End()
}

var requestKeys = []string{"uid", "resource", "subResource", "name", "namespace", "operation", "userInfo", "dryRun", "oldObject", "object", "options"}

func scanRequest(d *jsonscan.Scanner, r *request) error {
	return d.Object(func(k []byte) error {
		switch string(k) {
		case "uid":
			return d.StringInto((*string)(&r.UID), nil)
		case "resource":
			return scanStruct(d, func(k []byte) error {
				switch string(k) {
				case "group":
					return d.StringInto(&r.Resource.Group, constant)
				case "version":
					return d.StringInto(&r.Resource.Version, constant)
				case "resource":
					return d.StringInto(&r.Resource.Resource, constant)
				}
				return d.Other(k, "group", "version", "resource")
			})
		case "subResource":
			return d.StringInto(&r.SubResource, nil)
		case "name":
			return d.StringInto(&r.Name, nil)
		case "namespace":
			return d.StringInto(&r.Namespace, nil)
		case "operation":
			return d.StringInto((*string)(&r.Operation), constant)
		case "userInfo":
			return scanStruct(d, func(k []byte) (err error) {
				switch string(k) {
				case "username":
					return d.StringInto(&r.UserInfo.Username, nil)
				case "groups":
					r.UserInfo.Groups, err = d.Strings(constant)
					return err
				}
				return d.Other(k, "username", "groups")
			})
		case "dryRun":
			if d.Peek() == 'n' {
				r.DryRun = nil
				return d.Null()
			}
			b, err := d.Bool()
			if err != nil {
				return err
			}
			r.DryRun = &b
			return nil
		case "oldObject":
			return scanStruct(d, func(k []byte) error {
				switch string(k) {
				case "metadata":
					m := &r.OldObject.Metadata
					return scanStruct(d, func(k []byte) (err error) {
						switch string(k) {
						case "uid":
							return d.StringInto((*string)(&m.UID), nil)
						case "deletionTimestamp":
							return d.StringInto(&m.DeletionTimestamp, nil)
						case "finalizers":
							m.Finalizers, err = d.Strings(nil)
							return err
						}
						return d.Other(k, "uid", "deletionTimestamp", "finalizers")
					})
				case "spec":
					raw, err := d.Raw()
					if err != nil {
						return err
					}
					return r.OldObject.Spec.UnmarshalJSON(raw)
				}
				return d.Other(k, "metadata", "spec")
			})
		case "object":
			raw, err := d.Raw()
			if err != nil {
				return err
			}
			return r.Object.UnmarshalJSON(raw)
		case "options":
			raw, err := d.Raw()
			if err != nil {
				return err
			}
			// A copy, as json.RawMessage keeps one: the body is reused.
			r.Options = append(r.Options[:0:0], raw...)
			return nil
		}
		return d.Other(k, requestKeys...)
	})
}

// scanStruct reads an object into a struct field as encoding/json does:
// null leaves it as it was, an object sets the fields it names (a repeated
// key merges into what an earlier one set) and anything else is declined.
func scanStruct(d *jsonscan.Scanner, field func(k []byte) error) error {
	switch d.Peek() {
	case 'n':
		return d.Null()
	case '{':
		return d.Object(field)
	}
	return jsonscan.ErrSlowPath
}

// constants are the values that repeat in every review: the review's
// version and kind, the operations, the common API groups, versions and
// resources, and the common groups of users. constant returns them without allocating.
var constants = func() map[string]string {
	m := map[string]string{}
	for _, s := range []string{reviewAPIVersion, reviewKind, "CREATE", "UPDATE", "DELETE", "CONNECT",
		"v1", "v1beta1", "apps", "batch", "policy", "pods", "deployments", "replicasets", "statefulsets",
		"daemonsets", "jobs", "namespaces", "nodes", "services", "configmaps", "secrets", "persistentvolumeclaims",
		"system:authenticated", "system:serviceaccounts", "system:serviceaccounts:kube-system", "system:masters", "system:nodes"} {
		m[s] = s
	}
	return m
}()

func constant(b []byte) string {
	if s, ok := constants[string(b)]; ok {
		return s
	}
	return string(b)
}
