// Checks Kubernetes manifests, offline:
//
//   node examples/kubernetes/validate/validate.mjs [DIR]      (default: examples/kubernetes)
//
// 1. Every YAML document of DIR/*.yaml (but kustomization.yaml) against the JSON schema of its
//    apiVersion and kind, as bundled in kubernetes-models (the Kubernetes OpenAPI schemas) and
//    @kubernetes-models/gateway-api (the Gateway API CRDs): required fields, types, enums,
//    formats. Like the OpenAPI schemas themselves, they do not flag unknown fields.
// 2. That the manifests fit together: kustomization.yaml lists every file; each Deployment's
//    selector matches its pod labels; each Service selects pods of some Deployment and its
//    targetPorts name their container ports; probes use ports the container declares; the
//    ConfigMaps, Secrets and PersistentVolumeClaims that pods use exist; the HPA and the
//    HTTPRoute point at a Deployment and a Service port that exist; one namespace for all.
//
// Prints "ok - FILE KIND/NAME" or "not ok - ..." per check, then "N passed, N failed"; exits 1
// on any failure.
import { readFileSync, readdirSync } from "node:fs";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments, parse } from "yaml";

const here = dirname(fileURLToPath(import.meta.url));
const dir = resolve(process.argv[2] || join(here, ".."));

let passed = 0;
let failed = 0;
function report(ok, what, why) {
  if (ok) {
    passed++;
    console.log(`ok - ${what}`);
  } else {
    failed++;
    console.log(`not ok - ${what}: ${why}`);
  }
}

// the module holding the models of an apiVersion
function moduleFor(apiVersion) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (group === "gateway.networking.k8s.io") return `@kubernetes-models/gateway-api/${group}/${version}`;
  if (group === "") return `kubernetes-models/${version}`;
  return `kubernetes-models/${group}/${version}`;
}

async function schemaCheck(doc) {
  if (!doc || typeof doc !== "object") return "not a Kubernetes object";
  if (typeof doc.apiVersion !== "string" || typeof doc.kind !== "string") return "apiVersion and kind required";
  let mod;
  try {
    mod = await import(moduleFor(doc.apiVersion));
  } catch (e) {
    return `no schema for apiVersion ${doc.apiVersion}`;
  }
  const Model = mod[doc.kind];
  if (!Model) return `no schema for ${doc.kind} in ${doc.apiVersion}`;
  try {
    new Model(doc).validate();
  } catch (e) {
    const errs = (e.errors || []).map((x) => `${x.instancePath || "/"} ${x.message}`);
    return errs.length ? errs.join("; ") : String(e.message || e);
  }
  return null;
}

const files = readdirSync(dir).filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml").sort();
const objects = [];   // { file, doc }

for (const file of files) {
  const text = readFileSync(join(dir, file), "utf8");
  const docs = parseAllDocuments(text);
  for (const d of docs) {
    if (d.errors.length) {
      report(false, file, d.errors.map((e) => e.message).join("; "));
      continue;
    }
    const doc = d.toJS();
    if (doc == null) continue;
    const what = `${file} ${doc.kind}/${doc.metadata && doc.metadata.name}`;
    const why = await schemaCheck(doc);
    report(why === null, what, why);
    objects.push({ file, doc });
  }
}

// --- how they fit together ------------------------------------------------------------------

const byKind = (kind) => objects.filter((o) => o.doc.kind === kind).map((o) => o.doc);
const named = (kind, name) => byKind(kind).find((d) => d.metadata.name === name);
const subset = (sel, labels) => Object.entries(sel || {}).every(([k, v]) => (labels || {})[k] === v);

// kustomization.yaml: every manifest listed, every listed file there
try {
  const k = parse(readFileSync(join(dir, "kustomization.yaml"), "utf8"));
  const listed = new Set(k.resources || []);
  const missing = files.filter((f) => !listed.has(f));
  const extra = [...listed].filter((f) => !files.includes(f));
  report(missing.length === 0 && extra.length === 0, "kustomization.yaml lists every manifest",
    `not listed: ${missing.join(", ") || "-"}; listed but absent: ${extra.join(", ") || "-"}`);
} catch (e) {
  report(false, "kustomization.yaml", String(e.message || e));
}

const namespaces = new Set(objects.filter((o) => o.doc.kind !== "Namespace").map((o) => o.doc.metadata.namespace));
const nsDoc = byKind("Namespace")[0];
report(namespaces.size === 1 && nsDoc && namespaces.has(nsDoc.metadata.name), "one namespace for everything",
  `namespaces used: ${[...namespaces].join(", ")}; Namespace object: ${nsDoc ? nsDoc.metadata.name : "none"}`);

for (const dep of byKind("Deployment")) {
  const name = `Deployment/${dep.metadata.name}`;
  const pod = dep.spec.template;
  report(subset(dep.spec.selector.matchLabels, pod.metadata.labels), `${name} selector matches its pod labels`,
    "spec.selector.matchLabels is not a subset of spec.template.metadata.labels");
  const volumes = pod.spec.volumes || [];
  for (const v of volumes) {
    if (v.configMap) report(!!named("ConfigMap", v.configMap.name), `${name} volume ${v.name}: ConfigMap ${v.configMap.name} exists`, "missing");
    if (v.secret) report(!!named("Secret", v.secret.secretName), `${name} volume ${v.name}: Secret ${v.secret.secretName} exists`, "missing");
    if (v.persistentVolumeClaim) {
      report(!!named("PersistentVolumeClaim", v.persistentVolumeClaim.claimName),
        `${name} volume ${v.name}: PVC ${v.persistentVolumeClaim.claimName} exists`, "missing");
    }
  }
  for (const c of pod.spec.containers) {
    const ports = new Set((c.ports || []).flatMap((p) => [p.name, p.containerPort]));
    for (const probe of ["readinessProbe", "livenessProbe", "startupProbe"]) {
      const p = c[probe];
      const port = p && ((p.httpGet && p.httpGet.port) || (p.tcpSocket && p.tcpSocket.port));
      if (port !== undefined && port !== null) {
        report(ports.has(port), `${name} ${c.name} ${probe} port ${port} is declared`, "no such container port");
      }
    }
    for (const m of c.volumeMounts || []) {
      report(volumes.some((v) => v.name === m.name), `${name} ${c.name} mount ${m.mountPath}: volume ${m.name} exists`, "missing");
    }
    for (const e of c.envFrom || []) {
      if (e.secretRef) report(!!named("Secret", e.secretRef.name), `${name} ${c.name} envFrom Secret ${e.secretRef.name} exists`, "missing");
      if (e.configMapRef) report(!!named("ConfigMap", e.configMapRef.name), `${name} ${c.name} envFrom ConfigMap ${e.configMapRef.name} exists`, "missing");
    }
  }
}

for (const svc of byKind("Service")) {
  const name = `Service/${svc.metadata.name}`;
  const dep = byKind("Deployment").find((d) => subset(svc.spec.selector, d.spec.template.metadata.labels));
  report(!!dep, `${name} selects the pods of a Deployment`, "its selector matches no Deployment's pod labels");
  if (!dep) continue;
  const ports = new Set(dep.spec.template.spec.containers.flatMap((c) => (c.ports || []).flatMap((p) => [p.name, p.containerPort])));
  for (const p of svc.spec.ports) {
    const tp = p.targetPort === undefined ? p.port : p.targetPort;
    report(ports.has(tp), `${name} port ${p.port} -> ${tp} is a container port of Deployment/${dep.metadata.name}`, "no such container port");
  }
}

for (const hpa of byKind("HorizontalPodAutoscaler")) {
  const ref = hpa.spec.scaleTargetRef;
  const dep = ref.kind === "Deployment" && named("Deployment", ref.name);
  report(!!dep, `HorizontalPodAutoscaler/${hpa.metadata.name} scales Deployment/${ref.name}`, "no such Deployment");
  if (dep) {
    const limited = dep.spec.template.spec.containers.every((c) => c.resources && c.resources.requests && c.resources.requests.cpu);
    report(limited, `HorizontalPodAutoscaler/${hpa.metadata.name}: its pods request CPU`, "a CPU utilization target needs cpu requests");
    report((dep.spec.replicas || 1) >= hpa.spec.minReplicas, `Deployment/${ref.name} replicas within the HPA's range`, "replicas below minReplicas");
  }
}

for (const route of byKind("HTTPRoute")) {
  for (const rule of route.spec.rules || []) {
    for (const b of rule.backendRefs || []) {
      const svc = (b.kind || "Service") === "Service" && named("Service", b.name);
      report(!!svc && svc.spec.ports.some((p) => p.port === b.port),
        `HTTPRoute/${route.metadata.name} sends to Service/${b.name}:${b.port}`, "no such Service port");
    }
  }
}

for (const pdb of byKind("PodDisruptionBudget")) {
  const dep = byKind("Deployment").find((d) => subset(pdb.spec.selector.matchLabels, d.spec.template.metadata.labels));
  report(!!dep && (dep.spec.replicas || 1) > pdb.spec.minAvailable, `PodDisruptionBudget/${pdb.metadata.name} leaves room to evict`,
    "it selects no Deployment, or minAvailable is not below its replicas");
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
