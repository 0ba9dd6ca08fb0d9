#!/usr/bin/env bash
# Runs inside the LocalStack container once it is ready: the index bucket, private and encrypted as on AWS.
set -euo pipefail

bucket="${SQUASH_BUCKET:-squash-local}"
if awslocal s3api head-bucket --bucket "$bucket" 2>/dev/null; then
    echo "squash: bucket $bucket already exists"
    exit 0
fi
awslocal s3api create-bucket --bucket "$bucket"
awslocal s3api put-public-access-block --bucket "$bucket" --public-access-block-configuration \
    BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
awslocal s3api put-bucket-encryption --bucket "$bucket" --server-side-encryption-configuration \
    '{"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}'
echo "squash: created bucket $bucket"
