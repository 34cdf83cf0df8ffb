using BlockRepl.Core.Replication;

namespace BlockRepl.Core;

/// <summary>What a sender puts in its handshake, captured atomically with opening the stream's gate.</summary>
public sealed record StreamOpening(ulong FirstSeq, Guid VolumeUuid, Guid NodeId, GenerationInfo Generations);
