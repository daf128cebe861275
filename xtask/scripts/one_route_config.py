"""The gatewayd configuration the HTTP/1 scripts share: one Istio Gateway on port 80 (the
ingress Service's targetPort GW), one VirtualService sending every host to Service `up`,
whose one endpoint is 127.0.0.1:UP."""


def one_route_config(gw: int, up: int) -> str:
    GW, UP = gw, up
    return f"""apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  ports: [{{name: http2, port: 80, targetPort: {GW}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: vs, namespace: default}}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route:
    - destination: {{host: up, port: {{number: 8000}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: up, namespace: default}}
spec:
  ports: [{{name: http, port: 8000, targetPort: {UP}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: up-1, namespace: default, labels: {{kubernetes.io/service-name: up}}}}
addressType: IPv4
ports: [{{name: http, port: {UP}}}]
endpoints:
- addresses: ["127.0.0.1"]
"""
