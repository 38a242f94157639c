// SPDX-License-Identifier: LicenseRef-Proprietary
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title Settlement anchor: the public record of each settlement the relay verified (issue 19).
/// @notice For each settlement the relay stores its RFC 9162 SHA-256 Merkle root over the device's receipts, with
/// the device, batch, receipt range and units. Anyone holding a receipt and its inclusion proof can check it
/// against the root anchored here. A settlement is anchored once: resending it reverts (idempotence on chain).
contract SettlementAnchor is AccessControl {
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");

    struct Anchor {
        bytes32 root;
        uint64 blockNumber;
    }

    mapping(bytes32 settlementId => Anchor) private _anchors;

    event Anchored(
        bytes32 indexed settlementId,
        bytes32 indexed device,
        bytes32 root,
        uint64 batch,
        uint64 firstSeq,
        uint64 lastSeq,
        uint256 units
    );

    error AlreadyAnchored(bytes32 settlementId);
    error ZeroIdentifier();
    error LengthMismatch();
    error BadRange(uint64 firstSeq, uint64 lastSeq);

    constructor() {
        _grantRole(DEFAULT_ADMIN_ROLE, msg.sender);
    }

    /// @notice Anchor one settlement.
    function anchor(
        bytes32 settlementId,
        bytes32 root,
        bytes32 device,
        uint64 batch,
        uint64 firstSeq,
        uint64 lastSeq,
        uint256 units
    ) external onlyRole(SETTLER_ROLE) {
        _anchor(settlementId, root, device, batch, firstSeq, lastSeq, units);
    }

    /// @notice Anchor many settlements in one transaction (all arrays the same length); reverts as a whole if any
    /// one of them is already anchored.
    function anchorMany(
        bytes32[] calldata settlementIds,
        bytes32[] calldata roots,
        bytes32[] calldata devices,
        uint64[] calldata batches,
        uint64[] calldata firstSeqs,
        uint64[] calldata lastSeqs,
        uint256[] calldata units
    ) external onlyRole(SETTLER_ROLE) {
        uint256 n = settlementIds.length;
        if (
            roots.length != n || devices.length != n || batches.length != n || firstSeqs.length != n
                || lastSeqs.length != n || units.length != n
        ) revert LengthMismatch();
        for (uint256 i = 0; i < n; ++i) {
            _anchor(settlementIds[i], roots[i], devices[i], batches[i], firstSeqs[i], lastSeqs[i], units[i]);
        }
    }

    /// @notice The anchored root and the block it was anchored in; a zero root means not anchored.
    function anchored(bytes32 settlementId) external view returns (bytes32 root, uint64 blockNumber) {
        Anchor storage a = _anchors[settlementId];
        return (a.root, a.blockNumber);
    }

    function _anchor(
        bytes32 settlementId,
        bytes32 root,
        bytes32 device,
        uint64 batch,
        uint64 firstSeq,
        uint64 lastSeq,
        uint256 units
    ) private {
        if (settlementId == bytes32(0) || root == bytes32(0) || device == bytes32(0)) revert ZeroIdentifier();
        if (lastSeq < firstSeq) revert BadRange(firstSeq, lastSeq);
        if (_anchors[settlementId].root != bytes32(0)) revert AlreadyAnchored(settlementId);
        _anchors[settlementId] = Anchor(root, uint64(block.number));
        emit Anchored(settlementId, device, root, batch, firstSeq, lastSeq, units);
    }
}
