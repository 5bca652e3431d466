"""Sends usage as a collector using the CloudEvents Python SDK would: a batch (a JSON array of
events in the SDK's JSON format), one structured event and one binary-mode event. Prints the
API's answers as one JSON list. Usage: cloudevents_client.py BASE_URL API_KEY TIME"""

import json
import sys
import urllib.request

from cloudevents.http import CloudEvent, to_binary, to_json, to_structured

base, key, time = sys.argv[1:4]
AI = "dev.creditflow.usage.ai_tokens"
INFRA = "dev.creditflow.usage.infra"


def event(id, source, type, data, subject=None):
    attrs = {"id": id, "source": source, "type": type, "time": time,
             "datacontenttype": "application/json"}
    if subject:
        attrs["subject"] = subject
    return CloudEvent(attrs, data)


def post(headers, body):
    req = urllib.request.Request(base + "/v1/usage", data=body, method="POST")
    req.add_header("authorization", "Bearer " + key)
    for k, v in headers.items():
        req.add_header(k, v)
    with urllib.request.urlopen(req) as res:
        return json.loads(res.read())


answers = []
batch = [
    event("sdk-1", "/collector-a", AI, {"model": "gpt-4o", "input_tokens": 4000}, "ana"),
    event("sdk-1", "/collector-b", AI, {"model": "gpt-4o", "output_tokens": 1000}),
    event("sdk-2", "/collector-a", INFRA, {"resource": "bandwidth", "quantity": "0.5", "unit": "gb"}),
]
body = "[" + ",".join(to_json(e).decode() for e in batch) + "]"
answers.append(post({"content-type": "application/cloudevents-batch+json"}, body.encode()))
headers, body = to_structured(
    event("sdk-3", "/collector-a", AI, {"model": "gpt-4o-mini", "input_tokens": 100000}))
answers.append(post(headers, body))
headers, body = to_binary(
    event("sdk-4", "/collector-a", AI, {"model": "gpt-4o", "cached_input_tokens": 8000}, "bob"))
answers.append(post(headers, body))
print(json.dumps(answers))
