"""Web pages. The full pages of the four users come with a later issue; this is the front door."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

_HOME = """<!doctype html>
<html lang="zh-CN">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>医联 Yilian</title>
<style>
body{font-family:system-ui,"Noto Sans CJK SC","Microsoft YaHei",sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;line-height:1.6}
h1{font-size:1.8rem} code{background:#f3f3f3;padding:0 .3rem}
</style></head>
<body>
<h1>医联 · Yilian 县域医共体互联网关</h1>
<p>乡镇卫生院的 HL7 v2 与 DICOM 数据进入居民电子健康档案（FHIR R4），远程影像、心电诊断与会诊请求安全送达上级医院。</p>
<p lang="en">The consortium gateway: township HL7 v2 and DICOM traffic into each resident's FHIR R4 record;
remote imaging, ECG and consultation requests to tertiary hospitals over an audited channel.</p>
<ul>
<li>FHIR R4: <a href="/fhir/metadata"><code>/fhir</code></a></li>
<li>API 文档 / API docs: <a href="/docs"><code>/docs</code></a></li>
<li>令牌 / Tokens: <code>POST /auth/token</code></li>
<li>运行状态 / Health: <a href="/healthz"><code>/healthz</code></a>, <a href="/readyz"><code>/readyz</code></a></li>
</ul>
</body></html>
"""


@router.get("/", response_class=HTMLResponse)
def home() -> str:
    return _HOME
