#!/usr/bin/env python3
"""Independent re-implementation of the formats in docs/FORMAT.md, from its
text, with pyca/cryptography (tested with 48.0.0). Checks every
```vector NAME block of the document byte for byte.

Run from the repository root: python3 tests/vectors/check_format_vectors.py
"""
import re, hashlib, struct
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

import os, sys
root=os.path.join(os.path.dirname(os.path.abspath(__file__)),'..','..')
text=open(os.path.join(root,'docs','FORMAT.md')).read()
V={}
for name, body in re.findall(r"```vector (\S+)\n(.*?)```", text, re.S):
    d={}; last=None
    for line in body.splitlines():
        if line.startswith(' '): d[last]+=line.strip(); continue
        k,v=line.split(':',1); d[k]=v.strip(); last=k
    V[name]={k:bytes.fromhex(v) for k,v in d.items()}

def hkdf(ikm,salt,info,n=32):
    return HKDF(hashes.SHA256(),n,salt,info).derive(ikm)

v=V['oneshot']
hdr=b"KWD"+bytes([1,1,len(v['name'])])+v['name']+v['version']
assert hdr==v['header']
aad=hdr+v['class']+v['context']; assert aad==v['aad']
ct=hdr+v['nonce']+AESGCM(v['key']).encrypt(v['nonce'],v['plaintext'],aad)
assert ct==v['ciphertext']; print('oneshot ok')

for name in ['stream-3-chunks','stream-empty']:
    v=V[name]
    sh=b"KWD"+bytes([1,2,len(v['name'])])+v['name']+v['version']+v['chunk_exp']+v['salt']
    info=b"keyward/v1/stream"+hashlib.sha256(sh+v['class']+v['context']).digest()
    k=hkdf(v['key'],v['salt'],info); assert k==v['stream_key']
    c=1<<v['chunk_exp'][0]; pt=v['plaintext']
    chunks=[pt[i:i+c] for i in range(0,len(pt),c)] or [b""]
    out=sh
    for i,ch in enumerate(chunks):
        nonce=b"\0\0\0"+struct.pack(">Q",i)+bytes([i==len(chunks)-1])
        out+=AESGCM(k).encrypt(nonce,ch,b"")
    assert out==v['ciphertext'],name; print(name,'ok')

v=V['dek-wrap']
info=b"keyward/v1/dek-kek"+bytes([len(v['name'])])+v['name']+v['version']+v['purpose']+v['class']
kek=hkdf(v['master'],v['store_id'],info); assert kek==v['kek']
assert aes_key_wrap(kek,v['key'])==v['wrapped']; print('dek-wrap ok')

v=V['ecies']
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
rsk=ec.derive_private_key(int.from_bytes(v['recipient_private'],'big'),ec.SECP256R1())
rpub=rsk.public_key().public_bytes(Encoding.X962,PublicFormat.CompressedPoint); assert rpub==v['recipient_public']
esk=ec.derive_private_key(int.from_bytes(v['ephemeral_private'],'big'),ec.SECP256R1())
epk=esk.public_key().public_bytes(Encoding.X962,PublicFormat.CompressedPoint)
z=esk.exchange(ec.ECDH(),rsk.public_key())
k=hkdf(z,epk+rpub,b"keyward/v1/ecies-p256")
blob=b"\x01"+epk+AESGCM(k).encrypt(b"\0"*12,v['secret'],v['aad'])
assert blob==v['blob']; print('ecies ok')

v=V['signed-message']
sk=ed25519.Ed25519PrivateKey.from_private_bytes(v['seed'])
from cryptography.hazmat.primitives.serialization import Encoding as E, PublicFormat as P
assert sk.public_key().public_bytes(E.Raw,P.Raw)==v['public_key']
hdr=b"KWS\x01"+bytes([len(v['name'])])+v['name']+v['version']+v['signer']+v['counter']+v['timestamp']+bytes([len(v['audience'])])+v['audience']
sig=sk.sign(b"keyward/v1/signed-message"+hdr+hashlib.sha512(v['message']).digest())
assert hdr+sig==v['blob']; print('signed-message ok')

v=V['ecdsa-p256']
sk=ec.derive_private_key(int.from_bytes(v['private'],'big'),ec.SECP256R1())
pub=sk.public_key()
assert pub.public_bytes(Encoding.X962,PublicFormat.UncompressedPoint)==v['public']
r=int.from_bytes(v['signature_p1363'][:32],'big'); s=int.from_bytes(v['signature_p1363'][32:],'big')
assert encode_dss_signature(r,s)==v['signature_der']
pub.verify(v['signature_der'],v['message'],ec.ECDSA(hashes.SHA256())); print('ecdsa ok')
assert len(V)==7, sorted(V)
print('all', len(V), 'vectors of docs/FORMAT.md reproduced independently')
